"""Process-level stdio rules shared by table backends and filters.

smtpd reads the protocol on the process's stdout (fd 1, the same socket as fd 0) and logs
its stderr: a stray print() on fd 1 would be a malformed reply and make smtpd exit.
"""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(label: str = "%(name)s") -> None:
    """Log to stderr (smtpd's log) as ``label[pid]: message``, once per process."""
    root = logging.getLogger("opensmtpd")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
        root.setLevel(os.environ.get("OPENSMTPD_LOG_LEVEL", "INFO").upper())
    relabel_logging(label)


def relabel_logging(label: str) -> None:
    """Name the process in its log lines once it knows its name (from the handshake)."""
    for handler in logging.getLogger("opensmtpd").handlers:
        handler.setFormatter(logging.Formatter(f"{label}[%(process)d]: %(message)s"))


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
