"""The real table-procexec while its child restarts: requests wait for the new child, each
within its own deadline, instead of a -1 the new child would have avoided (real processes,
driven over imsg as smtpd 6.8 drives a table; the child is tests/children/fault_table.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from opensmtpd.table import Error, Found, Service

from .conftest import Bridged, child, ours

USERINFO = Service.USERINFO
VUSER = Found("65534:65534:/var/empty")
Start = Callable[..., Bridged]


def fault_bridge(bridge: Start, tmp_path: Path, data_file: Path, **settings: object
                 ) -> tuple[Bridged, Path]:
    mode = tmp_path / "mode"
    mode.write_text("ok")
    bridged = bridge(f"{child(tmp_path, 'fault_table.py')} {mode} {data_file}",
                     **{"protocol": "native", "handshake_timeout": 10, **settings})
    assert bridged.driver.lookup(USERINFO, "vuser") == VUSER
    return bridged, mode


def kill_child(bridged: Bridged, tmp_path: Path, count: int) -> int:
    """SIGKILL the child that became ready ``count``-th, by its PID; wait until the bridge
    has seen it die."""
    pid = int(bridged.wait_log(r"ready: child pid (\d+)", count=count)[count - 1])
    assert ours(pid, tmp_path)
    os.kill(pid, signal.SIGKILL)
    bridged.wait_log(rf"child pid {pid} was killed by SIGKILL")
    return pid


def test_lookups_right_after_crashes_are_answered_by_the_new_child(
        bridge: Start, tmp_path: Path, data_file: Path) -> None:
    bridged, _ = fault_bridge(bridge, tmp_path, data_file, deadline=5)
    # three children killed before any answers: the back-off grows to 1 s
    killed = [kill_child(bridged, tmp_path, n) for n in (1, 2, 3)]
    for _ in range(3):  # asked at once; each waits for the 4th child, none gets -1
        assert bridged.driver.lookup(USERINFO, "vuser") == VUSER
    ready = [int(p) for p in bridged.wait_log(r"ready: child pid (\d+)", count=4)]
    assert len(set(ready)) == 4 and ready[3] not in killed
    assert "answering -1" not in bridged.log()
    assert "lookup userinfo 'vuser': waits for the next child (starting in" in bridged.log()


def test_a_child_that_keeps_crashing_gets_minus_one_within_the_deadline(
        bridge: Start, tmp_path: Path, data_file: Path) -> None:
    """The driver gives up (BackendTimeout, a failed test) 5 s past the 1 s deadline: the
    bridge's -1 comes before that, never a hang."""
    bridged, mode = fault_bridge(bridge, tmp_path, data_file, deadline=1, max_backoff=0.5,
                                 timeout=6)
    mode.write_text("crash-start")
    kill_child(bridged, tmp_path, 1)
    for _ in range(2):
        assert bridged.driver.lookup(USERINFO, "vuser") == Error("-1")
    bridged.wait_log(r"crashing at start", count=2)  # the next children started, and died
    assert "no child ready to ask within 1s" in bridged.log() or "cannot wait" in bridged.log()
    mode.write_text("ok")
    for _ in range(20):  # bounded: once a child comes up, the lookups are answered again
        if bridged.driver.lookup(USERINFO, "vuser") == VUSER:
            break
    else:
        raise AssertionError(bridged.log())
