"""table-procexec's I/O around the sans-IO Bridge: fd 0 to smtpd, one child at a time
(child.py), one poll loop, the clock and the signals.

Only EOF on fd 0 (smtpd's lookup process exiting) ends it; SIGTERM and SIGINT do the
same. Either way the child is stopped by its PID before the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Sequence
from types import FrameType

from ..stdio import read_some, relabel_logging, write_all
from ..table.metrics import TableMetrics
from ..table.metrics import directory as metrics_directory
from .bridge import Bridge
from .child import READ_SIZE, Child, SpawnError, describe_status

monotonic = time.monotonic

log = logging.getLogger("opensmtpd.procexec")

MAX_TO_CHILD = 1 << 20  # bytes queued for a child that does not read: it is restarted
IDLE_CHECK = 1.0  # seconds between liveness checks of the child when nothing happens


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
        self._label = bridge.table  # the log label's table name, once smtpd named it

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
            if not write_all(self.smtpd_fd, bridge.to_smtpd):
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
                data = read_some(fd)
                if not data:
                    return False
                self.bridge.receive_smtpd(data, monotonic())
                if self.bridge.table is not self._label:  # OPEN: log lines name the table
                    self._label = self.bridge.table
                    relabel_logging(f"table {self._label}")
                    if metrics_directory() is not None:
                        self.bridge.metrics = TableMetrics(self._label)
            elif child is not None and fd == child.fd:
                self._child_socket(child, mask)
            elif child is not None and fd == child.stderr_fd and child.drain_stderr():
                self.poller.unregister(child.stderr_fd)
        return True

    # --- the child's socket (non-blocking: EAGAIN is not EOF) ---

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

    # --- the child's life ---

    def _check_child(self) -> None:
        child = self.child
        if child is not None and child.process.poll() is not None:
            self._reap(describe_status(child.process.returncode))

    def _spawn(self, now: float) -> None:
        try:
            child = Child.spawn(self.command, self.bridge.table or "table")
        except SpawnError as exc:
            self.bridge.spawn_failed(str(exc), now)
            return
        self.child = child
        self.poller.register(child.fd, select.POLLIN)
        self.poller.register(child.stderr_fd, select.POLLIN)
        self.bridge.child_started(child.pid, now)

    def _reap(self, how: str, kill: bool = False) -> None:
        """The child is done for: make sure it is gone (by PID), log its last words."""
        child = self.child
        assert child is not None
        how = child.reap(how, kill)
        self._close(child)
        self.bridge.child_exited(how, time.monotonic())

    def _close(self, child: Child) -> None:
        child.drain_stderr(final=True)
        for fd in (child.fd, child.stderr_fd):
            self.poller.unregister(fd)
        child.close()
        self.child = None

    def stop_child(self) -> None:
        """EOF first (a table exits on EOF), then SIGTERM, then SIGKILL: by PID."""
        child = self.child
        if child is None:
            return
        how = child.stop()
        log.info("child pid %d %s", child.pid, how)
        self._close(child)
