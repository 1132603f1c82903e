"""Fixtures for the filter e2e tier: a real Prometheus (Debian's package) on loopback,
TLS material and credentials for smtpd 7.6, and raw SMTP clients.

Prometheus is started by absolute path with its own config and a temporary TSDB, and
stopped by its PID. A missing binary is a failure (make deps installs it), never a skip.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.smtpd import free_port, port_open

from ..paths import REPO

PROMETHEUS = Path("/usr/bin/prometheus")
RULES = REPO / "ops" / "prometheus" / "opensmtpd-alerts.yml"
FILTER_CMD = "/usr/bin/python3 -m opensmtpd.prometheus -exporter 127.0.0.1:{port}"


class Prometheus:
    """A Prometheus server scraping exporters every second."""

    def __init__(self, tmp_path: Path, targets: dict[str, int]) -> None:
        if not PROMETHEUS.exists():
            pytest.fail("prometheus missing: apt-get install prometheus (make deps)",
                        pytrace=False)
        self.port = free_port()
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        statics = "\n".join(
            f"      - targets: ['127.0.0.1:{port}']\n        labels: {{smtpd: '{name}'}}"
            for name, port in targets.items())
        (self.dir / "prometheus.yml").write_text(f"""\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: opensmtpd
    static_configs:
{statics}
""")
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.logs()
            with contextlib.suppress(OSError):
                if self._get("/-/ready").startswith("Prometheus"):
                    return
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.logs()}")

    def _get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode())

    def api(self, path: str, **params: str) -> Any:
        reply = json.loads(self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}"))
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, expected: float, timeout: float = 30.0) -> float | None:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.value(expr)
            if got == expected:
                return got
            time.sleep(0.5)
        return got

    def logs(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, int]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: dict[str, int]) -> Prometheus:
        started.append(Prometheus(tmp_path, targets))
        return started[-1]

    yield start
    for server in started:
        server.stop()


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
