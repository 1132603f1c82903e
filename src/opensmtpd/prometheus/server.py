"""The /metrics HTTP server, facing the network: prometheus_client's WSGI app and its
``ThreadingWSGIServer`` (wsgiref), with only what a public port needs changed.

socketserver prints a traceback to stderr — smtpd's log — for every connection that
ends in an exception (a client resetting before its request, an idle one timing out),
and wsgiref has no timeout nor any cap on threads. Here:

- ``handle_error`` logs one line per event class per ``LOG_INTERVAL``, with the count
  of the events suppressed meanwhile; never a traceback;
- at most ``MAX_CONNECTIONS`` connections are served at once (one thread each); those
  past it are closed at once;
- every read or write waits ``timeout`` (``IDLE_TIMEOUT``) at most, and a connection is
  shut down ``3 * timeout`` after it was accepted (a client trickling bytes);
- a request (line and headers) is ``MAX_REQUEST_BYTES`` at most, so memory is bounded
  by ``MAX_CONNECTIONS`` too.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

from .limits import IDLE_TIMEOUT, MAX_CONNECTIONS

log = logging.getLogger("opensmtpd.prometheus")

MAX_REQUEST_BYTES = 16 * 1024
LOG_INTERVAL = 60.0
_DETAIL = 120  # characters of a client-supplied detail kept in a log line


class Throttle:
    """One log line per event class per ``interval``; the rest counted, and the count
    reported with the class's next line. The classes are this module's constants."""

    def __init__(self, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def event(self, kind: str, detail: str) -> None:
        with self._lock:
            now = self.clock()
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        more = (f" (and {suppressed} more in the last {now - last:.0f}s)"
                if suppressed and last is not None else "")
        log.warning("metrics endpoint: %s: %s%s", kind, _printable(detail), more)


def _printable(text: str) -> str:
    """A client's bytes in one short log line (no newline, no control character)."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= _DETAIL else text[:_DETAIL] + "…"


class RequestTooLarge(Exception):
    pass


class _Bounded:
    """The request stream, refusing to read more than ``limit`` bytes in all."""

    def __init__(self, raw: io.BufferedIOBase, limit: int) -> None:
        self._raw, self._remaining = raw, limit

    def _allowed(self, size: int | None) -> int:
        if self._remaining <= 0:
            raise RequestTooLarge(f"more than {MAX_REQUEST_BYTES} bytes")
        return self._remaining if size is None or size < 0 else min(size, self._remaining)

    def readline(self, size: int | None = -1) -> bytes:
        allowed = self._allowed(size)
        line = self._raw.readline(allowed)
        self._remaining -= len(line)
        if self._remaining <= 0 and not line.endswith(b"\n"):
            raise RequestTooLarge(f"more than {MAX_REQUEST_BYTES} bytes")
        return line

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(self._allowed(size))
        self._remaining -= len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _ErrorStream:
    """Where wsgiref prints the traceback of a response that failed to be written (a
    client that stops reading, past the timeout): its last line, throttled."""

    def __init__(self, throttle: Throttle, client: str) -> None:
        self._throttle, self._client, self._text = throttle, client, ""

    def write(self, text: str) -> None:
        self._text = (self._text + text)[-4096:]

    def flush(self) -> None:
        lines = [line for line in self._text.splitlines() if line.strip()]
        if lines:
            self._throttle.event("writing the response failed",
                                 f"{self._client}: {lines[-1]}")
        self._text = ""


class _Handler(WSGIRequestHandler):
    server: MetricsServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.client_timeout)  # each recv and send
        self.rfile = _Bounded(self.rfile, MAX_REQUEST_BYTES)  # type: ignore[assignment]

    def get_stderr(self) -> _ErrorStream:  # type: ignore[override]
        return _ErrorStream(self.server.throttle, self.client_address[0])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # a scrape is not news

    def log_error(self, format: str, *args: Any) -> None:
        self.server.throttle.event("bad request", f"{self.client_address[0]}: "
                                   f"{format % args}")


def _kind(exc: BaseException | None) -> str:
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "client reset the connection"
    if isinstance(exc, TimeoutError):
        return "client idle past the timeout"
    if isinstance(exc, RequestTooLarge):
        return "request too large"
    if isinstance(exc, OSError):
        return "socket error"
    return "unexpected error"


class MetricsServer(ThreadingWSGIServer):
    daemon_threads = True
    request_queue_size = 128  # listen(2) backlog; socketserver's 5 drops a burst's SYNs

    def __init__(self, host: str, port: int, registry: CollectorRegistry, *,
                 max_connections: int = MAX_CONNECTIONS, timeout: float = IDLE_TIMEOUT,
                 throttle: Throttle | None = None) -> None:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.address_family = family
        self.throttle = throttle or Throttle()
        self.client_timeout, self.deadline = timeout, 3 * timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}
        super().__init__((str(sockaddr[0]), int(sockaddr[1])), _Handler)
        self.set_app(self._guarded(make_wsgi_app(registry)))

    def _guarded(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """A collector that raises is one log line and a 500, not a traceback."""
        def guarded(environ: dict[str, Any], start_response: Callable[..., Any],
                    ) -> Iterable[bytes]:
            try:
                return app(environ, start_response)
            except Exception as exc:
                self.throttle.event("collecting metrics failed",
                                    f"{type(exc).__name__}: {exc}")
                start_response("500 Internal Server Error",
                               [("Content-Type", "text/plain")], sys.exc_info())
                return [b"collecting metrics failed; see the filter's log\n"]
        return guarded

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.throttle.event("too many connections",
                                f"{client_address[0]} refused, {self.max_connections} "
                                "already served")
            self.shutdown_request(request)
            return
        with self._lock:
            self._deadlines[request] = time.monotonic() + self.deadline
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread: it will not release the slot
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
        self._slots.release()

    def service_actions(self) -> None:
        """Called by serve_forever between accepts: end connections past the deadline."""
        now = time.monotonic()
        with self._lock:
            late = [s for s, deadline in self._deadlines.items() if deadline < now]
            for sock in late:
                del self._deadlines[sock]
        for sock in late:
            try:
                address = sock.getpeername()[0]
                sock.shutdown(socket.SHUT_RDWR)  # the handler's read or write ends
            except OSError:
                continue  # already gone
            self.throttle.event("connection past the deadline",
                                f"{address} still connected after {self.deadline:.0f}s")

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        client = client_address[0] if isinstance(client_address, tuple) else "?"
        self.throttle.event(_kind(exc), f"{client}: {type(exc).__name__}: {exc}")
