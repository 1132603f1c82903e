"""filter-prometheus's /metrics port against hostile clients (issue 14): the real exporter
process, started as smtpd starts it, with its stderr (smtpd's log) read afterwards.

Resets before the request (SO_LINGER 0), resets after it, garbage, oversized headers,
half-open connections held open, clients trickling bytes, and more connections than the
cap: one log line per event class at most, never a traceback, threads bounded, the
filter loop never blocked, and /metrics answering correctly afterwards."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from harness.smtpd import free_port

from opensmtpd.prometheus.server import Throttle

from .test_process import Exporter, exporter, sample, scrape  # noqa: F401 (a fixture)

TIMEOUT = 1  # -http-timeout: idle 1 s, a connection ends 3 s after it was accepted
CAP = 8      # -http-max-connections


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def reset_before_request(port: int) -> None:  # the reproducer
    _reset(_connect(port))


def reset_after_request(port: int) -> None:
    s = _connect(port)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    _reset(s)


def _exchange(port: int, data: bytes) -> bytes:
    s = _connect(port)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        return reply
    except OSError:
        return b""  # the server closed first: what counts is its log
    finally:
        s.close()


def garbage(port: int) -> None:
    _exchange(port, bytes(range(256)) * 4 + b"\r\n\r\n")


def oversized(port: int) -> None:
    _exchange(port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n")


def trickle(port: int) -> None:
    """A byte every half second: never idle for the timeout, stopped at the deadline."""
    s = _connect(port)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        for _ in range(40):  # 20 s at most; the server ends it after 3 s
            time.sleep(0.5)
            s.sendall(b"X")
    except OSError:
        pass
    finally:
        s.close()


def threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"Threads:\s+(\d+)", status)[1])  # type: ignore[index]


def run_all(target: Callable[[int], None], port: int, times: int, parallel: int) -> None:
    def worker(n: int) -> None:
        for _ in range(n):
            target(port)
    workers = [threading.Thread(target=worker, args=(times // parallel,))
               for _ in range(parallel)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)


def wait_scrape(port: int, e: Exporter) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = scrape(port)
        if text is not None:
            return text
        assert e.proc.poll() is None, e.log()
        time.sleep(0.2)
    raise AssertionError(f"/metrics not answering: {e.log()}")


def connect_report(i: int) -> bytes:
    return (f"report|0.7|{1700000000 + i}.000000|smtp-in|link-connect|{i:016x}|c{i}.test|"
            f"pass|192.0.2.{i % 250 + 1}:{1024 + i}|192.0.2.254:25\n").encode()


def test_hostile_clients_never_flood_the_log(exporter) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    port = free_port()
    e = exporter("-exporter", f"127.0.0.1:{port}", "-http-timeout", str(TIMEOUT),
                 "-http-max-connections", str(CAP))
    assert e.registration()[-1] == "register|ready"
    wait_scrape(port, e)
    idle_threads, rss_before = threads(e.proc.pid), e.rss_kib()
    peak = [idle_threads]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], threads(e.proc.pid))
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sent = 0
        run_all(reset_before_request, port, 200, 10)
        e.sock.sendall(b"".join(connect_report(i) for i in range(sent, sent + 20)))
        sent += 20
        run_all(reset_after_request, port, 50, 5)
        run_all(garbage, port, 30, 3)
        run_all(oversized, port, 10, 2)
        e.sock.sendall(b"".join(connect_report(i) for i in range(sent, sent + 20)))
        sent += 20
        run_all(trickle, port, 3, 3)  # each until the server ends it at the deadline
        # half-open: connected, silent, held; four times the cap at once
        held = [_connect(port) for _ in range(4 * CAP)]
        e.sock.sendall(b"".join(connect_report(i) for i in range(sent, sent + 20)))
        sent += 20
        time.sleep(TIMEOUT + 1)  # past the idle timeout of those served
        for s in held:
            s.close()
    finally:
        stop.set()
        watcher.join(5)

    text = wait_scrape(port, e)
    assert sample(text, "smtpd_sessions_total", direction="smtp-in", family="inet4") == sent
    log = e.log()
    assert "Traceback" not in log, log
    kinds = Counter(m[1] for m in re.finditer(r"metrics endpoint: ([^:]+):", log))
    # one line per class: the test is shorter than the 60 s interval
    assert all(n == 1 for n in kinds.values()), log
    assert {"client reset the connection", "bad request", "request too large",
            "too many connections", "client idle past the timeout",
            "connection past the deadline"} <= set(kinds), log
    assert len(log.splitlines()) <= 12, log
    # the cap: accept loop, the filter's main thread and the bind thread besides them
    assert peak[0] <= idle_threads + CAP, (idle_threads, peak[0])
    assert e.rss_kib() - rss_before < 16 * 1024
    assert e.close() == 0


def test_throttle_one_line_per_class_per_interval(caplog) -> None:  # type: ignore[no-untyped-def]
    now = [0.0]
    throttle = Throttle(interval=60, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="opensmtpd.prometheus"):
        for _ in range(5):
            throttle.event("client reset the connection", "127.0.0.1: reset")
        throttle.event("bad request", "127.0.0.1: code 400, message Bad request\r\nX")
        now[0] = 61.0
        throttle.event("client reset the connection", "127.0.0.1: reset")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "metrics endpoint: client reset the connection: 127.0.0.1: reset",
        "metrics endpoint: bad request: 127.0.0.1: code 400, message Bad request\\x0d\\x0aX",
        "metrics endpoint: client reset the connection: 127.0.0.1: reset "
        "(and 4 more in the last 61s)",
    ]
