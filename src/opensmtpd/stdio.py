"""The one I/O layer of the processes smtpd runs: table backends, filters, table-procexec.

smtpd speaks the protocol on the process's fd 0 (and fd 1: the same socket, except for
imsg tables) and logs its stderr: a stray ``print()`` on fd 1 would be a malformed reply
and make smtpd exit, so fd 1 is kept for the protocol (``private_stdout``). When smtpd is
daemonized the stderr of its tables is /dev/null (table-protocols.md §1.1): logs then go
to syslog (facility mail) instead of nowhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import syslog

log = logging.getLogger("opensmtpd")
READ_SIZE = 65536


def read_some(fd: int, size: int = READ_SIZE) -> bytes:
    """One read; a read error is logged and reads as EOF (b"")."""
    try:
        return os.read(fd, size)
    except OSError as exc:
        log.info("read error on fd %d (%s): treating it as EOF", fd, exc)
        return b""


def write_all(fd: int, data: bytes | bytearray | memoryview) -> bool:
    """Write everything (a blocking descriptor); False when the peer is gone."""
    try:
        written = os.write(fd, data)  # one write, nearly always
        if written == len(data):
            return True
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        log.info("smtpd closed the connection (%s)", exc)
        return False
    return True


class _Labelled(logging.Formatter):
    """``label[pid]: message``, or ``label child[PID]: message`` for a record carrying a
    ``child_pid`` (what table-procexec's child wrote). The label comes from the wire (a
    table name) or the user (a filter name): it is never part of a format string, so a
    ``%`` in it is just text."""

    def __init__(self, label: str | None) -> None:
        super().__init__()
        self.label = label

    def format(self, record: logging.LogRecord) -> str:
        label = self.label or record.name
        child = getattr(record, "child_pid", None)
        who = f"{label} child[{child}]" if child is not None else f"{label}[{record.process}]"
        text = f"{who}: {record.getMessage()}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


_PRIORITY = {logging.DEBUG: syslog.LOG_DEBUG, logging.INFO: syslog.LOG_INFO,
             logging.WARNING: syslog.LOG_WARNING, logging.ERROR: syslog.LOG_ERR}


class _Syslog(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        syslog.openlog(os.path.basename(sys.argv[0] or "opensmtpd"), syslog.LOG_PID,
                       syslog.LOG_MAIL)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging never takes the process down
            syslog.syslog(_PRIORITY.get(record.levelno, syslog.LOG_ERR), self.format(record))


def stderr_is_devnull() -> bool:
    try:
        mine, null = os.fstat(2), os.stat(os.devnull)
    except OSError:
        return True
    return stat.S_ISCHR(mine.st_mode) and mine.st_rdev == null.st_rdev


def setup_logging(label: str | None = None) -> None:
    """Log to stderr (smtpd's log), or to syslog when stderr is /dev/null, as
    ``label[pid]: message`` (the logger's name when no label is given), once per process.
    A log line that cannot be written is dropped, never raised."""
    root = logging.getLogger("opensmtpd")
    if not root.handlers:
        handler = _Syslog() if stderr_is_devnull() else logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
        root.setLevel(os.environ.get("OPENSMTPD_LOG_LEVEL", "INFO").upper())
        logging.raiseExceptions = False
    relabel_logging(label)


def relabel_logging(label: str | None) -> None:
    """Name the process in its log lines once it knows its name (from the handshake)."""
    for handler in logging.getLogger("opensmtpd").handlers:
        handler.setFormatter(_Labelled(label))


def private_stdout() -> int:
    """Keep fd 1 for the protocol only: stray output goes to stderr, not to smtpd.

    Returns a private duplicate of the protocol descriptor.
    """
    sys.stdout.flush()
    protocol = os.dup(1)
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr: discard stray output rather than corrupt the protocol
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    return protocol
