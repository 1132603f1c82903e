"""table-procexec's child process: started exactly as smtpd 7.6 starts a table, its stderr
turned into log lines, reaped and stopped by its PID (its process group).

As smtpd 7.6 runs a table (table-protocols.md §1.1): argv[0] is the table name, one
socket on fd 0 and fd 1, the environment is ours (smtpd's); stderr is a pipe whose
lines reach smtpd's log as ``table NAME child[PID]: line``. The child runs in its own
session, so a shell child's own children are stopped with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("opensmtpd.procexec")
child_log = logging.getLogger("opensmtpd.procexec.child")

READ_SIZE = 65536
STDERR_LINE = 2000  # longest child stderr line logged whole (longer ones are cut)
STOP_GRACE = 1.0  # seconds a child has after EOF, then after SIGTERM


class SpawnError(Exception):
    """The child could not be started (the message says which program and why)."""


def describe_status(returncode: int | None) -> str:
    if returncode is None:
        return "closed its socket"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    sock: socket.socket  # ours, non-blocking; the child has the other end on fd 0 and 1
    stderr_fd: int  # the read end of its stderr pipe, non-blocking
    fd: int = -1  # the socket's, cached: the hot loop compares it for every event
    polling_out: bool = False
    outbox: bytearray = field(default_factory=bytearray)  # bytes it has not read yet
    stderr_buf: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.fd = self.sock.fileno()

    @classmethod
    def spawn(cls, words: Sequence[str], argv0: str) -> Child:
        """Run ``words`` (an absolute program, then its arguments) as ``argv0``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_read, err_write = os.pipe()
        try:
            process = subprocess.Popen(
                [argv0, *words[1:]], executable=words[0],
                stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=err_write,
                close_fds=True, start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (err_read, err_write):
                os.close(fd)
            ours.close()
            raise SpawnError(f"{words[0]}: {exc}") from None
        finally:
            theirs.close()
        os.close(err_write)
        ours.setblocking(False)
        os.set_blocking(err_read, False)
        return cls(process, ours, err_read)

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal_group(self, signum: int) -> None:
        """Its PID is its process group's id (its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    # --- stderr: what it writes there goes to smtpd's log, line by line ---

    def drain_stderr(self, final: bool = False) -> bool:
        """Log what the child wrote to stderr (all of it when ``final``). True at EOF."""
        while True:
            try:
                data: bytes | None = os.read(self.stderr_fd, READ_SIZE)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data:
                self.stderr_buf += data
            self._stderr_lines(flush=data == b"" or (final and not data))
            if not data or not final:
                return data == b""

    def _stderr_lines(self, flush: bool) -> None:
        buf = self.stderr_buf
        while True:
            end = buf.find(b"\n")
            if end < 0 and len(buf) > STDERR_LINE:
                end = STDERR_LINE
            if end < 0 and not (flush and buf):
                return
            if end < 0:
                end = len(buf)
            line = bytes(buf[:end]).decode("utf-8", "replace").rstrip("\r")
            del buf[: end + 1]
            child_log.info("%s", line[:STDERR_LINE], extra={"child_pid": self.pid})

    # --- its end ---

    def reap(self, how: str, kill: bool = False) -> str:
        """The child is done for (``how``): make sure it is gone, by PID. Returns how it
        ended: its own exit status when it was not killed (why its socket closed)."""
        process = self.process
        if not kill:  # it closed its socket: most likely exiting, let it say how
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.5)
        if process.poll() is None:
            self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if not kill and process.returncode is not None:
            how = describe_status(process.returncode)
        return how

    def stop(self) -> str:
        """EOF first (a table exits on EOF), then SIGTERM, then SIGKILL, by PID. Returns
        how it ended."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        for signum, grace in ((None, STOP_GRACE), (signal.SIGTERM, STOP_GRACE),
                              (signal.SIGKILL, 5.0)):
            if signum is not None:
                self.signal_group(signum)
            try:
                self.process.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        return describe_status(self.process.returncode)

    def close(self) -> None:
        """Close our ends (after the last of its stderr was drained)."""
        self.sock.close()
        os.close(self.stderr_fd)
