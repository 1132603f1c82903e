"""Which smtpd is on the other end, from ``config|smtpd-version|VALUE`` (filters of every
version; line-protocol tables of 7.6+), as a value that compares like a tuple.

Values seen: ``6.6.4p1``, ``6.8.0p2`` (Debian 12), ``7.6.0-portable``, ``7.9.0-portable``
(portable releases), ``7.9.0`` (OpenBSD base, as in smtpd-filters(7)), ``7.6.0-procexec``
(table-procexec speaking for an older smtpd). Anything else is unknown: None.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# MAJOR.MINOR[.PATCH][pN][-SUFFIX], ASCII digits only
_VERSION = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})(?:\.([0-9]{1,3}))?(?:p[0-9]{1,3})?"
                      r"(?:-[A-Za-z0-9_.]{1,32})?")


class SmtpdVersion(NamedTuple):
    """``SmtpdVersion(7, 9, 0) >= (7, 9)`` is True: compare with plain tuples."""

    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def parse_smtpd_version(text: str | None) -> SmtpdVersion | None:
    """``"7.9.0-portable"`` -> ``SmtpdVersion(7, 9, 0)``; None for anything unknown."""
    if not text or len(text) > 64:
        return None
    match = _VERSION.fullmatch(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return SmtpdVersion(int(major), int(minor), int(patch or 0))


# What changed with the smtpd version (read in Debian's 7.6.0p1 and 7.9.0p0 sources):
# FILTER_WIZ left filter_execs[] (lka_filter.c): register|filter|smtp-in|wiz is fatal.
NO_WIZ_PHASE = SmtpdVersion(7, 9, 0)
# table_lookup() (table.c) passes the auth key user:password un-lowercased.
AUTH_KEY_INTACT = SmtpdVersion(7, 9, 0)
