"""Real table and filter processes, connected exactly as smtpd connects them.

* a table on smtpd <= 7.5 (imsg): one AF_UNIX stream socket on fd 0 only; fd 1 is
  something else (here a pipe that must stay empty);
* a table on smtpd >= 7.6 and in the 2020 dialect, and a filter: the same socket on
  fd 0 and fd 1 (table-protocols.md §1.1, §2, §3.1; filter-protocol.md §0).

A reader thread hands everything the process writes to the judge as it arrives, so
writing a burst never deadlocks against a process that answers while it reads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHILDREN = HERE / "children"
REPO = HERE.parents[1]
PYTHON = sys.executable
TABLE_PROCEXEC = str(Path(PYTHON).parent / "table-procexec")


STARTED: list[Process] = []  # every process of the running test (conftest stops them)


def stop_all() -> None:
    """Stop, by PID, whatever a test started and did not close (it failed midway)."""
    while STARTED:
        proc = STARTED.pop()
        if proc.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGKILL)
            proc.process.wait(10)
        with contextlib.suppress(OSError):
            proc.sock.close()


class Process:
    def __init__(self, argv: Sequence[str], *, fd1_is_socket: bool, stderr: Path,
                 executable: str | None = None, on_output: Callable[[bytes], None],
                 env: dict[str, str] | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.stdout_r = None
        stdout: Any = theirs.fileno()
        if not fd1_is_socket:
            self.stdout_r, stdout_w = os.pipe()
            stdout = stdout_w
        self.stderr_path = stderr
        with open(stderr, "wb") as err:
            self.process = subprocess.Popen(
                list(argv), executable=executable, stdin=theirs.fileno(), stdout=stdout,
                stderr=err, close_fds=True, env={**os.environ, **(env or {})},
                start_new_session=True)
        theirs.close()
        if not fd1_is_socket:
            os.close(stdout)
        self.sock = ours
        STARTED.append(self)
        self.lock = threading.Condition()
        self.on_output = on_output
        self.eof = False
        self.stray_stdout = b""
        self.peak_rss_kb = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self.stdout_r is not None:
            threading.Thread(target=self._drain_stdout, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            with self.lock:
                if data:
                    self.on_output(data)
                else:
                    self.eof = True
                self.lock.notify_all()
            if not data:
                return

    def _drain_stdout(self) -> None:
        assert self.stdout_r is not None
        while data := os.read(self.stdout_r, 65536):
            self.stray_stdout += data
        os.close(self.stdout_r)

    def send(self, data: bytes) -> bool:
        """False when the process no longer reads (it died: a finding, not a harness error)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    return done()
                self.lock.wait(min(left, 0.5))
            return True

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kb(self) -> int:
        """Peak resident set size so far (VmHWM), 0 if the process is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return self.peak_rss_kb
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
        return self.peak_rss_kb

    def close(self, timeout: float = 20.0) -> int | None:
        """EOF (as smtpd exiting gives), then the exit status; killed by PID if it hangs
        (returns None then)."""
        self.rss_kb()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        try:
            status: int | None = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._reader.join(5)
        self.sock.close()
        return status

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def executable(tmp: Path, source: Path) -> str:
    """``source`` as an executable with this interpreter in its shebang: smtpd execs a
    table with argv[0] = the table name, so a backend is never ``python script.py``."""
    path = tmp / source.name
    if not path.exists():
        path.write_text(f"#!{PYTHON}\n" + source.read_text())
        path.chmod(0o755)
    return str(path)


def table(tmp: Path, name: str, *, imsg: bool, on_output: Callable[[bytes], None],
          mode: str = "sync", deadline: float = 0.2) -> Process:
    """table_fuzz.py as smtpd runs a table: argv[0] the table name, then its config."""
    return Process(["fuzz", mode, str(deadline)],
                   executable=executable(tmp, CHILDREN / "table_fuzz.py"),
                   fd1_is_socket=not imsg, stderr=tmp / f"{name}.stderr",
                   on_output=on_output)


def bridge(tmp: Path, name: str, *, on_output: Callable[[bytes], None]) -> Process:
    """table-procexec as smtpd 6.8 runs it (imsg on fd 0 only), its child misbehaving."""
    command = f"{PYTHON} {CHILDREN / 'misbehaving_child.py'}"
    return Process(["fuzz", "--protocol", "native", "--deadline", "0.2", "--max-backoff",
                    "0.05", "--restart-after", "2", command], executable=TABLE_PROCEXEC,
                   fd1_is_socket=False, stderr=tmp / f"{name}.stderr", on_output=on_output)


def filter_process(tmp: Path, name: str, *, on_output: Callable[[bytes], None],
                   script: Path | None = None, mode: str = "sync") -> Process:
    program = executable(tmp, script or CHILDREN / "filter_fuzz.py")
    argv = [program] if script is not None else [program, mode]
    return Process(argv, fd1_is_socket=True, stderr=tmp / f"{name}.stderr",
                   on_output=on_output)
