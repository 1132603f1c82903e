"""Process-level stdio rules shared by table backends and filters.

smtpd reads the protocol on the process's stdout (fd 1, the same socket as fd 0) and logs
its stderr: a stray print() on fd 1 would be a malformed reply and make smtpd exit.
"""

from __future__ import annotations

import logging
import os
import sys


class _Labelled(logging.Formatter):
    """``label[pid]: message``. The label comes from the wire (a table name) or the user
    (a filter name): it is never part of a format string, so a ``%`` in it is just text."""

    def __init__(self, label: str | None) -> None:
        super().__init__()
        self.label = label

    def format(self, record: logging.LogRecord) -> str:
        text = f"{self.label or record.name}[{record.process}]: {record.getMessage()}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


def setup_logging(label: str | None = None) -> None:
    """Log to stderr (smtpd's log) as ``label[pid]: message`` (the logger's name when no
    label is given), once per process."""
    root = logging.getLogger("opensmtpd")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
        root.setLevel(os.environ.get("OPENSMTPD_LOG_LEVEL", "INFO").upper())
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
