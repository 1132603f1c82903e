"""The one I/O layer of the processes smtpd runs: table backends, filters, table-procexec.

smtpd speaks the protocol on the process's fd 0 (and fd 1: the same socket, except for
imsg tables) and logs its stderr: a stray ``print()`` on fd 1 would be a malformed reply
and make smtpd exit, so fd 1 is kept for the protocol (``private_stdout``). When smtpd is
daemonized the stderr of its tables is /dev/null (table-protocols.md §1.1): logs then go
to syslog (facility mail) instead of nowhere, with the process's name as the ident
(``table-NAME[PID]``, ``filter-NAME[PID]``; the program's name until smtpd names it).
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


def program_name() -> str:
    """The label of a process smtpd has not named yet: its program's file name."""
    return os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "") or "opensmtpd"


def syslog_ident(label: str) -> str:
    """``table aliases`` -> ``table-aliases``: a syslog tag is one word of safe characters
    (a space or ``[`` would end it early in rsyslog's RFC 3164 parser)."""
    word = "".join(c if c.isalnum() or c in "._-" else "-" for c in label.strip())
    return word[:48] or "opensmtpd"


class _Labelled(logging.Formatter):
    """``label[pid]: message``, or ``label child[PID]: message`` for a record carrying a
    ``child_pid`` (what table-procexec's child wrote). The label comes from the wire (a
    table name) or the user (a filter name): it is never part of a format string, so a
    ``%`` in it is just text. For syslog (``prefix=False``) the label is the ident, which
    syslog writes as ``ident[PID]:`` itself: the message alone, or ``child[PID]: …``."""

    def __init__(self, label: str | None, *, prefix: bool = True) -> None:
        super().__init__()
        self.label = label or program_name()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        child = getattr(record, "child_pid", None)
        if self.prefix:
            who = (f"{self.label} child[{child}]" if child is not None
                   else f"{self.label}[{record.process}]")
            text = f"{who}: {record.getMessage()}"
        else:
            text = (f"child[{child}]: {record.getMessage()}" if child is not None
                    else record.getMessage())
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


_PRIORITY = {logging.DEBUG: syslog.LOG_DEBUG, logging.INFO: syslog.LOG_INFO,
             logging.WARNING: syslog.LOG_WARNING, logging.ERROR: syslog.LOG_ERR}


class _Syslog(logging.Handler):
    """syslog(3), facility mail, the process's name as the ident."""

    def __init__(self) -> None:
        super().__init__()
        self.ident = ""
        self.relabel(None)

    def relabel(self, label: str | None) -> None:
        ident = syslog_ident(label or program_name())
        if ident != self.ident:
            self.ident = ident
            syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_MAIL)
        self.setFormatter(_Labelled(label, prefix=False))

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
    """Log to stderr (smtpd's log) as ``label[pid]: message``, or to syslog (facility
    mail, ident ``label`` made one word) when stderr is /dev/null or closed; the program's
    name when no label is given. Once per process; call it before logging anything (a
    record logged earlier goes to Python's last-resort stderr: lost under a daemonized
    smtpd). A log line that cannot be written is dropped, never raised."""
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
        if isinstance(handler, _Syslog):
            handler.relabel(label)
        else:
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
