#!/usr/bin/python3
"""A table written with the seed's 2020 module API, speaking only the 2020 dialect.

argv[1]: a table file ("key value" lines, or keys alone). With the protocol forced to
2020, the 0.1 handshake is not understood (it is logged as malformed and not answered):
table-procexec has to detect the dialect.
"""

import sys

from opensmtpd import table

ENTRIES = {}
with open(sys.argv[1]) as handle:
    for raw in handle:
        key, _, value = raw.strip().partition(" ")
        if key and not key.startswith("#"):
            ENTRIES[key] = value.strip() or None


def check(token, table_name, service, key):
    table.boolean(token, key in ENTRIES)


def lookup(token, table_name, service, key):
    table.result(token, ENTRIES.get(key))


table.on_check(check)
table.on_lookup(lookup)
table.dispatch(protocol="2020")
