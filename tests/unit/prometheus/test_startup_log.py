"""filter-prometheus's log at start (issue 13 finding 8): an smtp-in-only smtpd is normal."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from harness.smtpd import free_port

from ..filter.test_runtime import PYTHON

SMTP_IN_ONLY = (b"config|smtpd-version|7.6.0-portable\nconfig|protocol|0.7\n"
                b"config|subsystem|smtp-in\nconfig|ready\n")


def start_log(tmp_path: Path, level: str) -> str:
    """What filter-prometheus logs from start to EOF, attached to listeners only."""
    ours, theirs = socket.socketpair()
    log_path = tmp_path / f"filter-prometheus-{level}.log"
    with open(log_path, "wb") as err:
        process = subprocess.Popen(
            [PYTHON, "-m", "opensmtpd.prometheus", "-exporter", f"127.0.0.1:{free_port()}"],
            stdin=theirs, stdout=theirs, stderr=err,
            env={**os.environ, "OPENSMTPD_LOG_LEVEL": level})
    theirs.close()
    try:
        ours.sendall(SMTP_IN_ONLY)
        ours.settimeout(20)
        data = b""
        while not data.endswith(b"register|ready\n"):
            chunk = ours.recv(65536)
            assert chunk, log_path.read_text()
            data += chunk
        assert b"smtp-in" in data and b"smtp-out" not in data, data
        ours.shutdown(socket.SHUT_WR)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        ours.close()
    return log_path.read_text(errors="replace")


def test_no_smtp_out_warning_on_an_smtp_in_only_start(tmp_path: Path) -> None:
    assert "smtp-out" not in start_log(tmp_path, "INFO")
    # still there for whoever looks at debug level
    assert "no smtp-out subsystem" in start_log(tmp_path, "DEBUG")
