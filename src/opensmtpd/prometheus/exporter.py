"""The HTTP side: ``/metrics`` served by prometheus_client from a thread
(``server.MetricsServer``: what a port facing the network needs).

A port that cannot be bound (taken, not yet available) is retried with a back-off and
logged, never fatal: smtpd exits when a filter does (filter-protocol.md §5.2), and the
seed's filter took the mail server down with ``log.Fatal(ListenAndServe)``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .limits import IDLE_TIMEOUT, MAX_CONNECTIONS

if TYPE_CHECKING:  # imported when serving: main() explains a missing prometheus_client
    from prometheus_client import CollectorRegistry

log = logging.getLogger("opensmtpd.prometheus")
DEFAULT_ADDRESS = "127.0.0.1:13742"  # the seed's port, on loopback


def parse_address(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every interface, as in Go)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: [{host}]:{port}")
    return host or "0.0.0.0", int(port)


class Exporter:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, *,
                 max_delay: float = 30.0, timeout: float = IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.host, self.port = host, port
        self.timeout, self.max_connections = timeout, max_connections
        self.registry = registry
        self.max_delay = max_delay
        self.serving = threading.Event()
        self.attempts = 0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._bind, name="exporter-bind", daemon=True)
        thread.start()
        return thread

    def _bind(self) -> None:
        delay = 0.5
        while True:
            self.attempts += 1
            try:
                from .server import MetricsServer

                server = MetricsServer(self.host, self.port, self.registry,
                                       timeout=self.timeout,
                                       max_connections=self.max_connections)
            except Exception as exc:  # OSError mostly; anything else must not kill us
                if self.attempts <= 3 or self.attempts % 20 == 0:
                    log.warning("cannot serve metrics on %s:%d (%s); retrying in %.0fs "
                                "(attempt %d)", self.host, self.port, exc, delay,
                                self.attempts)
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            log.info("serving metrics on http://%s:%d/metrics", _bracket(self.host),
                     self.port)
            self.serving.set()
            threading.Thread(target=server.serve_forever, name="exporter-http",
                             daemon=True).start()
            return


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
