"""filter-prometheus as smtpd runs it: arguments, a port that cannot be bound, and memory
that stays flat while a million distinct senders, HELOs and rDNS names go through."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.smtpd import free_port

from opensmtpd.prometheus.exporter import parse_address
from opensmtpd.prometheus.main import DEFAULT_MAX_SESSIONS, options

from ..filter.test_runtime import PYTHON

HANDSHAKE = (b"config|smtpd-version|7.6.0-portable\nconfig|protocol|0.7\n"
             b"config|subsystem|smtp-in\nconfig|subsystem|smtp-out\nconfig|ready\n")


def test_options_never_fail() -> None:
    assert options(["-exporter", "127.0.0.1:31333"]).address == ("127.0.0.1", 31333)
    assert options(["--exporter", "[::1]:9100"]).address == ("::1", 9100)
    assert options(["-exporter", ":9100"]).address == ("0.0.0.0", 9100)
    assert options([]).address == ("127.0.0.1", 13742)
    assert options(["-exporter", "nonsense"]).address == ("127.0.0.1", 13742)
    assert options(["-exporter", "::1:9100"]).address == ("127.0.0.1", 13742)
    assert options(["-exporter", "127.0.0.1:99999"]).address == ("127.0.0.1", 13742)
    assert options(["--bogus", "-exporter", "127.0.0.1:1"]).address == ("127.0.0.1", 1)
    assert options(["-max-sessions", "x"]).max_sessions == DEFAULT_MAX_SESSIONS
    assert options(["-max-sessions", "0"]).max_sessions == DEFAULT_MAX_SESSIONS
    assert options(["-max-sessions", "5"]).max_sessions == 5
    with pytest.raises(ValueError):
        parse_address("host")


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return None


def sample(text: str | None, name: str, **labels: str) -> float | None:
    if text is None:
        return None
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match[1] == name and ",".join(sorted((match[2] or "").split(","))) \
                == ",".join(sorted(want.split(","))):
            return float(match[3])
    return None


class Exporter:
    """filter-prometheus started as smtpd does (fd 0 and 1 one socket), stderr to a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.sock, theirs = socket.socketpair()
        self.log_path = tmp_path / "filter-prometheus.log"
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "opensmtpd.prometheus", *args], stdin=theirs, stdout=theirs,
                stderr=err)
        theirs.close()

    def registration(self) -> list[str]:
        self.sock.sendall(HANDSHAKE)
        data = b""
        self.sock.settimeout(10)
        while not data.endswith(b"register|ready\n"):
            chunk = self.sock.recv(65536)
            assert chunk, self.log()
            data += chunk
        return data.decode().splitlines()

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])  # type: ignore[index]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> int:
        self.sock.shutdown(socket.SHUT_WR)
        code = self.proc.wait(30)
        self.sock.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.sock.close()


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[type[Exporter]]:
    started: list[Exporter] = []

    def start(*args: str) -> Exporter:
        started.append(Exporter(tmp_path, *args))
        return started[-1]

    yield start  # type: ignore[misc]
    for e in started:
        e.kill()


def test_port_taken_is_retried_not_fatal(exporter) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    e = exporter("-exporter", f"127.0.0.1:{port}")
    assert e.registration()[-1] == "register|ready"  # it serves smtpd meanwhile
    e.sock.sendall(b"report|0.7|1.000000|smtp-in|link-connect|0123456789abcdef|a|pass|"
                   b"192.0.2.1:5|192.0.2.2:25\n")
    time.sleep(1.5)
    assert e.proc.poll() is None
    assert "cannot serve metrics" in e.log()
    squatter.close()
    deadline = time.monotonic() + 20
    text = None
    while time.monotonic() < deadline and text is None:
        time.sleep(0.25)
        text = scrape(port)
    assert text is not None, e.log()
    assert sample(text, "smtpd_sessions_total", direction="smtp-in", family="inet4") == 1
    assert e.close() == 0


def _sessions(start: int, count: int, close: bool = True) -> bytes:
    """Sessions with distinct rDNS, HELO and sender, each ending with link-disconnect."""
    out = []
    for i in range(start, start + count):
        sid = f"{i:016x}"
        head = f"report|0.7|{1700000000 + i * 0.001:.6f}|smtp-in|"
        out.append(
            f"{head}link-connect|{sid}|rdns-{i}.client.test|pass|198.51.{i >> 8 & 255}."
            f"{i & 255}:{1024 + i % 60000}|192.0.2.1:25\n"
            f"{head}link-identify|{sid}|EHLO|helo-{i}.client.test\n"
            f"{head}protocol-server|{sid}|250-mx.test Hello helo-{i}.client.test "
            f"[198.51.{i >> 8 & 255}.{i & 255}], pleased to meet you\n"
            f"{head}tx-mail|{sid}|{i & 0xffffffff:08x}|ok|sender-{i}@client-{i}.test\n")
        if close:
            out.append(f"{head}link-disconnect|{sid}\n")
    return "".join(out).encode()


def _wait_for_sessions(port: int, count: int, e: Exporter) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = sample(scrape(port), "smtpd_sessions_total", direction="smtp-in", family="inet4")
        if got == count:
            return
        assert e.proc.poll() is None, e.log()
        time.sleep(0.1)
    raise AssertionError(f"the filter did not process {count} sessions: {e.log()}")


def test_memory_flat_over_a_million_distinct_sessions(exporter) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    e = exporter("-exporter", f"127.0.0.1:{port}", "-max-sessions", "10000")
    e.registration()
    # warm-up: 20k sessions left open (twice the table: the oldest are evicted), then
    # 80k closed ones
    e.sock.sendall(_sessions(0, 20_000, close=False))
    for start in range(20_000, 100_000, 10_000):
        e.sock.sendall(_sessions(start, 10_000))
    _wait_for_sessions(port, 100_000, e)
    before = e.rss_kib()
    for start in range(100_000, 1_000_000, 10_000):
        e.sock.sendall(_sessions(start, 10_000))
    _wait_for_sessions(port, 1_000_000, e)
    after = e.rss_kib()
    text = scrape(port)
    # 10k of the open sessions were evicted, then one more to make room for the first
    # closed session; the gauge follows the table
    assert sample(text, "smtpd_exporter_sessions_evicted_total") == 10_001
    assert sample(text, "smtpd_sessions_active", direction="smtp-in", family="inet4") == 9_999
    assert sample(text, "smtpd_mail_from_total", direction="smtp-in", result="ok") == 1_000_000
    assert e.close() == 0
    print(f"filter-prometheus RSS: {before} KiB after 100k sessions, {after} KiB after 1M "
          f"(+{after - before} KiB)")
    # A leak of even 40 bytes per session would add 36 MB over these 900k sessions.
    assert after - before < 24 * 1024, (before, after)
    assert after < 256 * 1024


def test_table_metrics_served_on_the_same_endpoint(exporter, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from opensmtpd.table.metrics import ENV

    metrics_dir = tmp_path / "table-metrics"
    metrics_dir.mkdir()
    writer = subprocess.Popen(
        [PYTHON, "-c", "from opensmtpd.table.metrics import TableMetrics\n"
         "m = TableMetrics('aliases')\n"
         "for _ in range(7): m.answered('lookup', 'alias', 'found', 0.001)\n"
         "m.set('consul_stale', 1)\nprint('ready', flush=True)\nimport sys; sys.stdin.read()"],
        env={**os.environ, ENV: str(metrics_dir)}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        port = free_port()
        e = exporter("-exporter", f"127.0.0.1:{port}", "-table-metrics", str(metrics_dir))
        assert e.registration()[-1] == "register|ready"
        deadline = time.monotonic() + 20
        text = None
        while time.monotonic() < deadline and text is None:
            time.sleep(0.25)
            text = scrape(port)
        assert sample(text, "opensmtpd_table_requests_total", table="aliases", op="lookup",
                      service="alias", result="found") == 7, e.log()
        assert sample(text, "opensmtpd_table_consul_stale", table="aliases") == 1
        assert "\nsmtpd_exporter_unparsed_lines_total " in (text or "")  # the filter's own
        writer.communicate(timeout=30)  # the table process is gone: its gauge too,
        text = scrape(port)                # its counter stays
        assert sample(text, "opensmtpd_table_consul_stale", table="aliases") is None
        assert sample(text, "opensmtpd_table_requests_total", table="aliases", op="lookup",
                      service="alias", result="found") == 7
        assert e.close() == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)
