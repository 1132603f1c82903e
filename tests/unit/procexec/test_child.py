"""The child process (child.py): started as smtpd 7.6 starts a table (argv[0] the table
name, one socket on fd 0 and 1, its own session), its stderr lines in smtpd's log with
its PID, reaped and stopped by PID with its process group. First on its own, then
behind the real table-procexec."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opensmtpd.procexec.child import STDERR_LINE, Child, SpawnError, describe_status
from opensmtpd.table import Found, Service

from .conftest import Bridged, child, fault_child

USERINFO = Service.USERINFO
Start = Callable[..., Bridged]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_until(fd: int, needle: bytes, timeout: float = 10.0) -> bytes:
    """Read a non-blocking fd until ``needle`` shows up (bounded)."""
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data and time.monotonic() < deadline:
        select.select([fd], [], [], 0.1)
        with contextlib.suppress(BlockingIOError):
            data += os.read(fd, 65536)
    assert needle in data, data
    return data


def drained(c: Child, caplog: pytest.LogCaptureFixture, needle: str) -> list[logging.LogRecord]:
    """Drain the child's stderr until a log record holds ``needle`` (bounded)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        select.select([c.stderr_fd], [], [], 0.1)
        c.drain_stderr()
        records = [r for r in caplog.records if r.name == "opensmtpd.procexec.child"]
        if any(needle in r.getMessage() for r in records):
            return records
    raise AssertionError(f"{needle!r} not logged: {caplog.text}")


@pytest.fixture
def spawned() -> Callable[..., Child]:
    """Child.spawn, with every child stopped (by PID) at the end of the test."""
    children: list[Child] = []

    def spawn(script: str, argv0: str = "users") -> Child:
        c = Child.spawn(["/bin/sh", "-c", script], argv0)
        children.append(c)
        return c

    yield spawn
    for c in children:
        if c.process.poll() is None:
            c.signal_group(signal.SIGKILL)
            c.process.wait(10)
        if c.sock.fileno() >= 0:
            c.close()


# --- on its own -------------------------------------------------------------------------

def test_argv0_socket_on_fd_0_and_1_stderr_logged_with_its_pid(
        spawned: Callable[..., Child], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="opensmtpd")
    c = spawned('echo "argv0=$0" >&2; read line; echo "got $line"')
    os.write(c.fd, b"hello\n")  # its fd 0 ...
    assert read_until(c.fd, b"\n") == b"got hello\n"  # ... and its fd 1
    records = drained(c, caplog, "argv0=users")
    assert [r.getMessage() for r in records] == ["argv0=users"]
    assert records[0].child_pid == c.pid  # type: ignore[attr-defined]
    assert os.getsid(c.pid) == c.pid  # its own session: its PID is its group's


def test_a_missing_program_is_a_spawn_error_and_leaks_nothing(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(SpawnError, match=f"{tmp_path}/missing: .*No such file"):
        Child.spawn([str(tmp_path / "missing"), "arg"], "users")
    assert open_fds() == before


def test_stderr_long_lines_are_cut_and_the_last_partial_line_is_flushed(
        spawned: Callable[..., Child], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="opensmtpd")
    long = STDERR_LINE + 500
    c = spawned(f"head -c {long} /dev/zero | tr '\\0' x >&2; echo >&2; "
                "printf 'no newline' >&2")
    c.process.wait(10)
    assert c.drain_stderr(final=True) is True  # EOF
    lines = [r.getMessage() for r in caplog.records if r.name == "opensmtpd.procexec.child"]
    # (cut: the rest of the long line is dropped, or logged as a line of its own when it
    # arrived in a later read)
    assert lines[0] == "x" * STDERR_LINE and lines[-1] == "no newline"
    assert all(len(line) <= STDERR_LINE for line in lines)


def test_reap_reports_its_own_exit_status(spawned: Callable[..., Child]) -> None:
    c = spawned("exit 3")
    assert c.reap("closed its socket") == "exited with status 3"


def test_reap_with_kill_stops_a_running_child(spawned: Callable[..., Child]) -> None:
    c = spawned("sleep 300")
    assert c.reap("was stopped (hung)", kill=True) == "was stopped (hung)"
    assert c.process.returncode == -signal.SIGKILL


def test_stop_takes_the_process_group_down(spawned: Callable[..., Child]) -> None:
    """A shell child that ignores EOF and has a child of its own: SIGTERM to the group."""
    c = spawned('sleep 300 & echo "$!" >&2; wait')
    grandchild = int(read_until(c.stderr_fd, b"\n").strip())
    assert alive(grandchild)
    assert c.stop() == "was killed by SIGTERM"
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)


def test_stop_gives_eof_first(spawned: Callable[..., Child]) -> None:
    c = spawned("cat >/dev/null; exit 0")
    assert c.stop() == "exited with status 0"


@pytest.mark.parametrize(("code", "text"), [
    (None, "closed its socket"), (0, "exited with status 0"), (-9, "was killed by SIGKILL"),
    (-200, "was killed by signal 200"),
])
def test_describe_status(code: int | None, text: str) -> None:
    assert describe_status(code) == text


# --- behind table-procexec --------------------------------------------------------------

def test_child_gets_table_name_as_argv0_and_its_quoted_args(
        bridge: Start, tmp_path: Path, data_file: Path) -> None:
    spaced = tmp_path / "with space"
    spaced.mkdir()
    (spaced / "data").write_text(data_file.read_text())
    native = child(tmp_path, "native_table.py")
    # sh -c without operands: $0 is sh's own argv[0], which smtpd 7.6 (and so the bridge)
    # make the table name
    bridged = bridge(f'/bin/sh -c \'echo "argv0=$0" >&2; exec {native} "{spaced}/data"\'',
                     table="users", handshake_timeout=10)
    assert bridged.driver.lookup(USERINFO, "vuser") == Found("65534:65534:/var/empty")
    bridged.wait_log(r"table users child\[\d+\]: argv0=users")
    # the child got config|tablename: the library names its log lines after it
    bridged.wait_log(r"table users child\[\d+\]: table users\[\d+\]: ready: native protocol")


def test_stderr_lines_are_prefixed_with_the_table(bridge: Start, tmp_path: Path,
                                                  data_file: Path) -> None:
    bridged, mode = fault_child(bridge, tmp_path, data_file)
    mode.write_text("garbage")
    bridged.driver.lookup(USERINFO, "vuser")
    bridged.wait_log(r"table aliases child\[\d+\]: fault_table pid \d+: writing garbage")

