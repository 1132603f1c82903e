#!/usr/bin/python3
"""A Python table that speaks only the smtpd 7.6 protocol (forced, no detection).

argv[1]: a table file in smtpd's format ("key value" lines, or keys alone for a list).
Used behind table-procexec by the tests and the benchmark.
"""

import sys

from opensmtpd.table import MappingTable

MappingTable(path=sys.argv[1]).run(protocol="native")
