"""table-procexec passes the imsg conformance battery, whatever it bridges to:

    opensmtpd-table --protocol imsg -- table-procexec '/path/child args' conform

Children: Python (the library, forced to 7.6's protocol), POSIX sh (7.6's protocol),
Python with the seed's 2020 module API (2020 dialect, detected), and Debian 13's C
table-passwd 1.0.2 (7.6's protocol, from the trixie chroot): the bridge is judged the way
smtpd 6.8 judges a table, and every child has to work through it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from opensmtpd.cli.table import main

REPO = Path(__file__).resolve().parents[2]
CHILDREN = REPO / "tests" / "children"
BRIDGE = Path(sys.executable).parent / "table-procexec"
CHROOT = Path(os.environ.get("PYOS_CHROOT", REPO / "build" / "trixie"))
DATA = "root 0:0:/root\nalice alice:$6$salt$hash\nexample.org example.org\n"
PASSWD = "root:x:0:0::/root:/bin/sh\nalice:$6$salt$hash:1000:1000::/home/alice:/bin/sh\n"


def _require(path: Path, why: str) -> None:
    if not path.exists():
        pytest.fail(f"conformance prerequisite missing: {path} ({why})", pytrace=False)


def _child(tmp_path: Path, name: str) -> str:
    """The child's command line (argv[1] of the bridge)."""
    if name == "table-passwd (C, Debian 13)":
        _require(CHROOT / "usr/libexec/opensmtpd/table-passwd", "make chroot")
        if os.geteuid() != 0:
            pytest.fail("chroot needs root", pytrace=False)
        (CHROOT / "tmp" / "pyos-procexec-passwd").write_text(PASSWD)
        return f"/usr/sbin/chroot {CHROOT} /usr/libexec/opensmtpd/table-passwd " \
               "/tmp/pyos-procexec-passwd"
    source = (CHILDREN / name).read_text()
    if source.startswith("#!/usr/bin/python3"):
        source = f"#!{sys.executable}\n" + source.split("\n", 1)[1]
    path = tmp_path / name
    path.write_text(source)
    path.chmod(0o755)
    (tmp_path / "data").write_text(DATA)
    return f"{path} {tmp_path / 'data'}"


@pytest.mark.parametrize("name", ["native_table.py", "shell_table.sh", "table_2020.py",
                                  "table-passwd (C, Debian 13)"])
def test_battery_passes_through_the_bridge(name: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _require(BRIDGE, "pip install -e . (console script table-procexec)")
    assert main(["--protocol", "imsg", "--", str(BRIDGE), _child(tmp_path, name),
                 "conform"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("PASS: "), out
    assert "FAIL" not in out
    assert "handshake: OPEN acknowledged with an empty OK" in out
    assert "lookup userinfo: found '0:0:/root'" in out  # the child's answer came through
    assert "lookup credentials: found <value hidden>" in out
    assert "unknown service number 0x4000: error" in out
    assert "exit on EOF: exited with status 0" in out
    if name == "shell_table.sh":  # registered 4 services: the others are -1, unasked
        assert "lookup netaddr: error '-1'" in out
