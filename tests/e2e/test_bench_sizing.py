"""bench/smtpd_tables.py on real smtpd: it measures what it says (every RCPT looked up,
rows and ratios printed per generation) and its exit status is the replies' verdict —
0 when every message got the reply expected, 1 when one did not. Timings are never
judged here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .paths import REPO

BENCH = REPO / "bench" / "smtpd_tables.py"


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.fail("e2e prerequisite missing: must run as root (smtpd needs it)",
                    pytrace=False)
    return subprocess.run([sys.executable, str(BENCH), "--rounds", "1", "--messages", "30",
                           *args], capture_output=True, text=True, timeout=600)


def _row(output: str, label: str) -> re.Match[str]:
    found = re.search(rf"^{re.escape(label)} +(\d+) \((\d+)-(\d+)\) +([\d.]+) ", output,
                      re.MULTILINE)
    assert found, output
    return found


def test_every_generation_measured_and_passes() -> None:
    done = _bench("--roots", "6.8,7.9", "--backends", "static,mapping,procexec")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    sections = re.findall(r"^== smtpd (\S+) .*: 30 messages x 1 RCPT per run, 6 clients, "
                          r"10,000 users, spool on tmpfs", out, re.MULTILINE)
    assert sections == ["6.8", "7.9"], out
    static = _row(out, "file: (smtpd's static table)")
    assert int(static[1]) > 0 and static[4] == "1.000"
    _row(out, "MappingTable (Python)")
    _row(out, "MappingTable via table-procexec (Python)")  # 6.8 only: the bridge
    assert out.count("MappingTable via table-procexec") == 3  # its row, its per-lookup line
    assert re.search(r"^smtpd 7\.9: MappingTable \(Python\): [\d.]+x the static table's msg/s "
                     r"\(target >= 0\.95x: (met|SHORT)\)", out, re.MULTILINE), out
    assert "client check (static runs)" in out
    assert "FAILED" not in done.stderr


def test_a_message_refused_makes_the_exit_status_1() -> None:
    # message 3 goes to a user the table does not hold: smtpd refuses it 550 at RCPT
    done = _bench("--roots", "6.8", "--backends", "static,mapping", "--fake-unknown", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("message 3: after 'RCPT TO:<nobody@bench.test>': expected 250, "
                             "got '550 Invalid recipient: <nobody@bench.test>'") == 2
    assert "2 runs failed (exit status 1)" in done.stderr
