"""A real Prometheus (Debian's package) for tests: started by absolute path on loopback
with its own config, the shipped alert rules and a temporary TSDB; stopped by its PID. A
missing binary is a failure (make deps installs it), never a skip."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .smtpd import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
RULES = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "opensmtpd-alerts.yml"


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
