"""Backend programs the e2e tests install as PATH_LIBEXEC/table-pyos-*.

They run as user opensmtpd under the root's own /usr/bin/python3 and import the
library from PYTHONPATH, which smtpd passes through (table-protocols.md §1.1).
"""

from __future__ import annotations

from ..paths import REPO

SHEBANG = "#!/usr/bin/python3\n"

MAPPING = SHEBANG + """\
import sys
from opensmtpd.table import MappingTable

MappingTable(path=sys.argv[1]).run()
"""

# Behaviour switched at run time through the file given as argv[1]:
# ok | raise | hang | invalid (the deadline is 1 s).
FAULTY = SHEBANG + """\
import sys
import time
from pathlib import Path

from opensmtpd.table import Table

mode_file = Path(sys.argv[1])
home = str(mode_file.parent / "home")
table = Table(deadline=1.0)


@table.lookup("userinfo")
def userinfo(key):
    mode = mode_file.read_text().strip()
    if mode == "raise":
        raise RuntimeError("simulated backend bug")
    if mode == "hang":
        time.sleep(20)
    if mode == "invalid":
        return "65534:not-a-gid"
    return f"65534:65534:{home}" if key == "vuser" else None


table.run()
"""


def seed() -> str:
    """examples/seed_table.py, byte for byte after the shebang line."""
    source = (REPO / "examples" / "seed_table.py").read_text()
    return SHEBANG + source.split("\n", 1)[1]


# An auth-service table (7.6+: smtpd sends "check auth user:password"). It appends to
# argv[1] how each password for a known user arrived ("intact", "lower-cased", "other"),
# and the smtpd version it was told; never the password.
AUTH = SHEBANG + """\
import hmac
import sys
from opensmtpd.table import Table

PASSWORDS = {"alice": "Correct-Horse"}
table = Table()


@table.check("auth")
def auth(key):
    user, _, password = key.partition(":")
    expected = PASSWORDS.get(user)
    if expected is None:
        return False
    how = ("intact" if password == expected else
           "lower-cased" if password == expected.lower() else "other")
    with open(sys.argv[1], "a") as seen:
        seen.write(f"{how} {table.protocol} {table.smtpd_version}\\n")
    return hmac.compare_digest(password.encode(), expected.encode())


table.run()
"""
