"""table-procexec: serve an smtpd <= 7.5 table from any line-protocol table program.

smtpd.conf (the executable must be PATH_LIBEXEC/table-procexec: Debian's
opensmtpd-table-procexec package or `opensmtpd-table install procexec` puts it there)::

    table aliases "procexec:/usr/local/bin/table-foobar -f /etc/mail/foobar.conf"

smtpd runs ``table-procexec`` with argv[0] = the table name and argv[1] = the whole child
command line, and speaks imsg on fd 0 only (table-protocols.md §1.1). The command line is
split like a shell would (quotes, backslashes; no variables, no globbing, no shell) and
run with argv[0] = the table name, the socket on fd 0 and fd 1, stderr to a pipe whose
lines reach smtpd's log prefixed with the table name: exactly as smtpd 7.6 runs a table.

Options (for a launcher, or by hand; the environment variable in brackets is read when
the option is absent, so smtpd's environment can set it too):

  --protocol auto|native|2020  [TABLE_PROCEXEC_PROTOCOL]   default auto (see bridge.py)
  --form-2020 named|unnamed    [TABLE_PROCEXEC_FORM_2020]   default named (2020 requests
                               carry the table name, as go/py-opensmtpd expect)
  --deadline S                 [TABLE_PROCEXEC_DEADLINE]   default 5
  --handshake-timeout S        [TABLE_PROCEXEC_HANDSHAKE_TIMEOUT]   default 2
  --max-backoff S              [TABLE_PROCEXEC_MAX_BACKOFF]   default 5
  --restart-after N            [TABLE_PROCEXEC_RESTART_AFTER]   default 3

Only EOF on fd 0 ends it (exit 0, after stopping the child by its PID); SIGTERM and
SIGINT do the same.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import shlex
import signal
import socket
import stat
import subprocess
import sys
import syslog
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import NoReturn

from ..extras import self_test
from ..table.wire.procexec2020 import FORMS
from .bridge import PROTOCOLS, Bridge, Settings

monotonic = time.monotonic

log = logging.getLogger("opensmtpd.procexec")
child_log = logging.getLogger("opensmtpd.procexec.child")

EX_USAGE = 64
READ_SIZE = 65536
MAX_TO_CHILD = 1 << 20  # bytes queued for a child that does not read: it is restarted
STDERR_LINE = 2000  # longest child stderr line logged whole (longer ones are cut)
IDLE_CHECK = 1.0  # seconds between liveness checks of the child when nothing happens
STOP_GRACE = 1.0  # seconds a child has after EOF, then after SIGTERM


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TABLE_PROCEXEC_{name}", default)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, Settings, list[str]]:
    parser = _Parser(prog="table-procexec", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=PROTOCOLS, default=_env("PROTOCOL", "auto"))
    parser.add_argument("--form-2020", choices=FORMS, default=_env("FORM_2020", "named"))
    parser.add_argument("--deadline", default=_env("DEADLINE", "5"))
    parser.add_argument("--handshake-timeout", default=_env("HANDSHAKE_TIMEOUT", "2"))
    parser.add_argument("--max-backoff", default=_env("MAX_BACKOFF", "5"))
    parser.add_argument("--restart-after", default=_env("RESTART_AFTER", "3"))
    parser.add_argument("--self-test", action="store_true",
                        help="print where the interpreter and the library are, then exit")
    parser.add_argument("command", nargs="?",
                        help="the child's command line, one argument (smtpd's argv[1])")
    args = parser.parse_args(argv)
    try:
        settings = Settings(
            protocol=args.protocol, form_2020=args.form_2020, deadline=float(args.deadline),
            handshake_timeout=float(args.handshake_timeout),
            max_backoff=float(args.max_backoff), restart_after=int(args.restart_after),
            min_backoff=min(0.25, float(args.max_backoff)))
    except ValueError as exc:
        raise UsageError(f"bad setting: {exc}") from None
    if args.self_test:
        return args, settings, []
    return args, settings, split_command(args.command)


def split_command(line: str | None) -> list[str]:
    """argv[1] → the child's words: quote-aware, no shell; an absolute program path."""
    usage = 'in smtpd.conf: table NAME "procexec:/absolute/path/to/table [ARGS...]"'
    if line is None:
        raise UsageError(f"the child command line (argv[1]) is missing; {usage}")
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot split the child command line {line!r}: {exc}") from None
    if not words:
        raise UsageError(f"the child command line is empty; {usage}")
    if not words[0].startswith("/"):
        raise UsageError(f"the child program must be an absolute path, not {words[0]!r}; "
                         f"{usage}")
    return words


# --- logging: smtpd's log is our stderr (smtpd -d) or syslog (daemonized: stderr is
# /dev/null, table-protocols.md §1.1) ---


class _Format(logging.Formatter):
    def __init__(self, bridge: Bridge) -> None:
        super().__init__()
        self.bridge = bridge

    def format(self, record: logging.LogRecord) -> str:
        name = f"table {self.bridge.table}" if self.bridge.table else "table-procexec"
        child = getattr(record, "child_pid", None)
        who = f"{name} child[{child}]" if child is not None else f"{name}[{record.process}]"
        return f"{who}: {record.getMessage()}"


_PRIORITY = {logging.DEBUG: syslog.LOG_DEBUG, logging.INFO: syslog.LOG_INFO,
             logging.WARNING: syslog.LOG_WARNING, logging.ERROR: syslog.LOG_ERR}


class _Syslog(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        syslog.openlog("table-procexec", syslog.LOG_PID, syslog.LOG_MAIL)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging never takes the bridge down
            syslog.syslog(_PRIORITY.get(record.levelno, syslog.LOG_ERR), self.format(record))


def _stderr_is_devnull() -> bool:
    try:
        mine, null = os.fstat(2), os.stat(os.devnull)
    except OSError:
        return True
    return stat.S_ISCHR(mine.st_mode) and mine.st_rdev == null.st_rdev


def setup_logging(bridge: Bridge) -> None:
    root = logging.getLogger("opensmtpd")
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler = (_Syslog() if _stderr_is_devnull()
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(_Format(bridge))
    root.addHandler(handler)
    root.setLevel(os.environ.get("OPENSMTPD_LOG_LEVEL", "INFO").upper())
    root.propagate = False
    logging.raiseExceptions = False  # a log line that cannot be written is dropped, silently


# --- the child process ---


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    sock: socket.socket
    stderr_fd: int
    fd: int = -1  # the socket's, cached: the hot loop compares it for every event
    polling_out: bool = False
    outbox: bytearray = field(default_factory=bytearray)
    stderr_buf: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.fd = self.sock.fileno()

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal_group(self, signum: int) -> None:
        """The child runs in its own session: its PID is its process group's id, so a
        shell child's own children are stopped with it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


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


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


class _Poller:
    """epoll where it can (one syscall per wait, no fd list rebuilt: the hot loop waits
    twice per lookup), poll where it cannot (fd 0 a regular file, when run by hand).
    The POLL* and EPOLL* bits are the same numbers on Linux."""

    def __init__(self, first_fd: int) -> None:
        self._epoll: select.epoll | None = None
        try:
            self._epoll = select.epoll()
            self._epoll.register(first_fd, select.EPOLLIN)
        except OSError:
            if self._epoll is not None:
                self._epoll.close()
            self._epoll = None
            self._poll = select.poll()
            self._poll.register(first_fd, select.POLLIN)

    def register(self, fd: int, mask: int) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, mask)
        else:
            self._poll.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        if self._epoll is not None:
            self._epoll.modify(fd, mask)
        else:
            self._poll.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                self._poll.unregister(fd)

    def wait(self, timeout: float) -> list[tuple[int, int]]:
        if self._epoll is not None:
            return self._epoll.poll(timeout)
        return self._poll.poll(timeout * 1000)


class Runtime:
    """The I/O around a Bridge: fd 0 to smtpd, one child at a time, poll and clock.

    The loop is written for the common case (smtpd asks, the child answers, within
    microseconds): deadlines are only looked at when the earliest one is due, and
    nothing is recomputed that did not change.
    """

    def __init__(self, bridge: Bridge, command: Sequence[str], smtpd_fd: int = 0) -> None:
        self.bridge = bridge
        self.command = list(command)
        self.smtpd_fd = smtpd_fd
        self.child: Child | None = None
        self.poller = _Poller(smtpd_fd)
        self._wake: float | None = None
        self._next_check = time.monotonic() + IDLE_CHECK

    def run(self) -> int:
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while self._settle(monotonic()) and self._wait():
                pass
            log.info("EOF from smtpd: stopping")
        except _Stop as stop:
            log.info("%s: stopping", stop)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop_child()
        return 0

    # --- the loop: settle what the bridge decided, then wait for the next event ---

    def _settle(self, now: float) -> bool:
        """Deadlines if one is due, kill and spawn, then send what the bridge wrote.
        False when smtpd is gone."""
        bridge = self.bridge
        if now >= self._next_check:  # a child that died without closing its socket
            self._next_check = now + IDLE_CHECK
            self._check_child()
        if self._wake is not None and now >= self._wake:
            bridge.tick(now)
        if bridge.kill_reason is not None and self.child is not None:
            self._reap(f"was stopped ({bridge.kill_reason})", kill=True)
        if self.child is None and bridge.spawn_due(now):
            self._spawn(now)
        if bridge.to_child and self.child is not None:
            self.child.outbox += bridge.to_child
            bridge.to_child.clear()
            self._flush_child()
        if bridge.to_smtpd:
            if not self._to_smtpd(bridge.to_smtpd):
                return False
            bridge.to_smtpd.clear()
        self._wake = bridge.next_wakeup()
        return True

    def _wait(self) -> bool:
        """Wait for one round of events and hand them to the bridge. False on EOF."""
        wake = self._wake
        timeout = IDLE_CHECK if wake is None else min(IDLE_CHECK, max(0.0, wake - monotonic()))
        for fd, mask in self.poller.wait(timeout):
            child = self.child
            if fd == self.smtpd_fd:
                try:
                    data = os.read(fd, READ_SIZE)
                except OSError as exc:
                    log.info("read error from smtpd (%s): treating it as EOF", exc)
                    return False
                if not data:
                    return False
                self.bridge.receive_smtpd(data, monotonic())
            elif child is not None and fd == child.fd:
                self._child_socket(child, mask)
            elif child is not None and fd == child.stderr_fd:
                self._child_stderr()
        return True

    def _to_smtpd(self, data: bytes | bytearray) -> bool:
        try:
            written = os.write(self.smtpd_fd, data)
            while written < len(data):  # fd 0 is blocking: rare, a reply over a page
                written += os.write(self.smtpd_fd, data[written:])
        except OSError as exc:
            log.info("smtpd closed the connection (%s)", exc)
            return False
        return True

    def _flush_child(self) -> None:
        child = self.child
        assert child is not None
        try:
            sent = os.write(child.fd, child.outbox)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._reap(f"closed its socket ({exc.strerror})")
            return
        del child.outbox[:sent]
        if len(child.outbox) > MAX_TO_CHILD:
            self._reap(f"does not read its input ({len(child.outbox)} bytes waiting)", kill=True)
            return
        if bool(child.outbox) != child.polling_out:  # wait for room only while needed
            child.polling_out = bool(child.outbox)
            mask = select.POLLIN | (select.POLLOUT if child.polling_out else 0)
            self.poller.modify(child.fd, mask)

    def _child_socket(self, child: Child, mask: int) -> None:
        if mask & select.POLLOUT:
            self._flush_child()
            if self.child is None:
                return
        if not mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
            return
        try:
            data = os.read(child.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._reap(f"broke its socket ({exc.strerror})")
            return
        if not data:
            self._reap("closed its socket")
            return
        self.bridge.receive_child(data, monotonic())

    def _child_stderr(self, final: bool = False) -> None:
        """Log what the child wrote to stderr, line by line (all of it when ``final``)."""
        child = self.child
        assert child is not None
        while True:
            try:
                data: bytes | None = os.read(child.stderr_fd, READ_SIZE)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data:
                child.stderr_buf += data
            self._stderr_lines(child, flush=data == b"" or (final and not data))
            if data == b"":
                self.poller.unregister(child.stderr_fd)
            if not data or not final:
                return

    @staticmethod
    def _stderr_lines(child: Child, flush: bool) -> None:
        buf = child.stderr_buf
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
            child_log.info("%s", line[:STDERR_LINE], extra={"child_pid": child.pid})

    def _check_child(self) -> None:
        child = self.child
        if child is not None and child.process.poll() is not None:
            self._reap(describe_status(child.process.returncode))

    def _spawn(self, now: float) -> None:
        words = self.command
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_read, err_write = os.pipe()
        try:
            # argv[0] = the table name, socket on fd 0 and 1, as smtpd 7.6 runs a table
            process = subprocess.Popen(
                [self.bridge.table or "table", *words[1:]], executable=words[0],
                stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=err_write,
                close_fds=True, start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (err_read, err_write):
                os.close(fd)
            ours.close()
            self.bridge.spawn_failed(f"{words[0]}: {exc}", now)
            return
        finally:
            theirs.close()
        os.close(err_write)
        ours.setblocking(False)
        os.set_blocking(err_read, False)
        self.child = Child(process, ours, err_read)
        self.poller.register(ours.fileno(), select.POLLIN)
        self.poller.register(err_read, select.POLLIN)
        self.bridge.child_started(process.pid, now)

    def _reap(self, how: str, kill: bool = False) -> None:
        """The child is done for: make sure it is gone (by PID), log its last words."""
        child = self.child
        assert child is not None
        if not kill:  # it closed its socket: most likely exiting, let it say how
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(0.5)
        if child.process.poll() is None:
            child.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(5)
        if not kill and child.process.returncode is not None:
            how = describe_status(child.process.returncode)  # why its socket closed
        self._close(child)
        self.bridge.child_exited(how, time.monotonic())

    def _close(self, child: Child) -> None:
        self._child_stderr(final=True)
        for fd in (child.fd, child.stderr_fd):
            self.poller.unregister(fd)
        child.sock.close()
        os.close(child.stderr_fd)
        self.child = None

    def stop_child(self) -> None:
        """EOF first (a table exits on EOF), then SIGTERM, then SIGKILL: by PID."""
        child = self.child
        if child is None:
            return
        with contextlib.suppress(OSError):
            child.sock.shutdown(socket.SHUT_RDWR)
        for signum, grace in ((None, STOP_GRACE), (signal.SIGTERM, STOP_GRACE),
                              (signal.SIGKILL, 5.0)):
            if signum is not None:
                child.signal_group(signum)
            try:
                child.process.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        log.info("child pid %d %s", child.pid, describe_status(child.process.returncode))
        self._close(child)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, settings, command = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"table-procexec: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.self_test:
        return self_test("table-procexec")
    bridge = Bridge(settings, pid=os.getpid())
    setup_logging(bridge)
    return Runtime(bridge, command).run()


if __name__ == "__main__":
    sys.exit(main())
