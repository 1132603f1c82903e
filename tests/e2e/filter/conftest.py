"""Fixtures for the filter e2e tier: filter-prometheus's endpoint, TLS material and
credentials for smtpd 7.6, and raw SMTP clients (the real Prometheus is
tests/harness/prometheus.py, its fixture in tests/e2e/conftest.py)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
import urllib.parse
import urllib.request

import pytest
from harness.smtpd import port_open

FILTER_CMD = "/usr/bin/python3 -m opensmtpd.prometheus -exporter 127.0.0.1:{port}"


def scrape(port: int) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return bytes(reply.read())
    except OSError:
        return None


def wait_exporter(port: int, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            body = scrape(port)
            if body:
                return body
        time.sleep(0.1)
    raise AssertionError(f"filter-prometheus not serving on 127.0.0.1:{port}")


class IdleClient:
    """EHLO, MAIL FROM, then silence until smtpd's session timeout closes the link."""

    def __init__(self, port: int, sender: str = "idle@client.test") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")
        self._reply()
        self.sock.sendall(b"EHLO idle.client.test\r\n")
        self._reply()
        self.sock.sendall(f"MAIL FROM:<{sender}>\r\n".encode())
        code = self._reply()
        assert code == 250, code

    def _reply(self) -> int:
        while True:
            line = self.file.readline()
            assert line, "connection closed"
            if line[3:4] != b"-":
                return int(line[:3])

    def wait_closed(self, timeout: float) -> bool:
        """True once smtpd closed the connection (EOF), within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            return self.file.read() is not None
        except OSError:
            return False
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool missing: apt-get install prometheus (make deps)", pytrace=False)
    return found


def metric(body: bytes | None, name: str, **labels: str) -> float | None:
    """A sample's value in an exposition, labels in any order; None when absent."""
    if body is None:
        return None
    for line in body.decode().splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, rest = head.partition("{")
        found = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if pair)
        if metric_name == name and found == {k: f'"{v}"' for k, v in labels.items()}:
            return float(value)
    return None
