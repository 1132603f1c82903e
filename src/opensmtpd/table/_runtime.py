"""The table runtime: owns the file descriptors, the dispatch loop and the deadlines.

Invariants (DESIGN.md): every request gets exactly one well-formed reply; nothing but
protocol reaches smtpd's socket (logs go to stderr); only EOF ends the process.

Sync handlers run inline in the reader thread (no hand-off cost: smtpd sends one
request at a time). A watchdog answers a request whose handler misses its deadline
with an error and starts a fresh reader, abandoning the stuck thread; its late result
is dropped. Async handlers run on an asyncio loop in another thread; on protocols with
request ids (native, 2020) several may be in flight, on imsg they are answered in order.

The table is anything shaped like ``Served`` (``Table`` is): this module never imports it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import stat
import threading
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from ..stdio import (
    READ_SIZE,
    private_stdout,
    read_some,
    relabel_logging,
    setup_logging,
    write_all,
)
from .metrics import TableMetrics
from .wire import PROTOCOLS, detect, imsg, native, procexec2020
from .wire.events import (
    REPLY_TYPES,
    Answer,
    Error,
    Event,
    Found,
    Hello,
    Ignored,
    Malformed,
    NotFound,
    Ready,
    Reply,
    Request,
    Updated,
)
from .wire.services import Service

log = logging.getLogger("opensmtpd.table")

MAX_STUCK = 32  # abandoned handler threads before requests are refused outright
# Async handlers in flight: past this many the reader stops reading until one ends (at
# its deadline at the latest), so a burst of requests cannot grow memory (docs/limits.md).
MAX_PENDING = 1024
_monotonic = time.monotonic
_read, _write = os.read, os.write
_answer = tuple.__new__  # _answer(Answer, (op, id, reply)): Answer(...) at a third of the cost
_RESULTS = {Found: "found", NotFound: "not-found", Error: "error", Updated: "ok"}
_OFF = TableMetrics.off()


class Served(Protocol):
    """What the runtime needs of a table (``Table`` is one)."""

    deadline: float  # seconds a request may take before it is answered error
    # optional: ``metrics``, a TableMetrics (Table's records nothing unless turned on)

    @property
    def services(self) -> tuple[Service, ...]: ...  # what to register (smtpd >= 7.6)
    def handshake(self, protocol: str, hello: Hello | None) -> None: ...
    def answer(self, request: Request) -> Reply | Coroutine[Any, Any, Reply]: ...
    def failure(self, request: Request, exc: BaseException) -> Error: ...


class Codec(Protocol):
    """A TableSide of opensmtpd.table.wire."""

    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> Event | None: ...
    def discard(self) -> int: ...
    def send(self, event: Answer | Ready) -> bytes: ...


def make_codec(protocol: str) -> Codec:
    if protocol == "native":
        return native.TableSide()
    if protocol == "2020":
        return procexec2020.TableSide()
    if protocol == "imsg":
        return imsg.TableSide(os.getpid())
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


class Server:
    def __init__(self, table: Served, *, protocol: str | None = None, infd: int = 0,
                 outfd: int = 1) -> None:
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        self.table = table
        self.protocol = protocol
        self.infd, self.outfd = infd, outfd
        self.codec: Codec | None = None
        self._abandoned: set[str] = set()  # sync requests answered by the watchdog
        self._tasks: dict[str, concurrent.futures.Future[Reply]] = {}  # async, in flight
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[Request, float, bool]] = {}
        self._generation = 0
        self._done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = threading.BoundedSemaphore(MAX_PENDING)  # async handlers in flight
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self.metrics: TableMetrics = _OFF
        self._metered = False  # self.metrics.enabled, read once (a property)

    # --- I/O ---

    def _write(self, data: bytes) -> None:
        if not write_all(self.outfd, data):  # smtpd is gone
            self._done.set()

    def _start(self, first: bytes) -> None:
        """Pick the codec from the first bytes (or the forced protocol)."""
        data = first
        protocol = self.protocol
        while protocol is None:
            try:
                protocol = detect(data)
            except ValueError as exc:
                log.error("%s; expecting smtpd >= 7.6 (config|), <= 7.5 (imsg) or 2020 "
                          "(table|)", exc)
                protocol = "native"  # report every line as malformed from here
                break
            if protocol is None:
                more = read_some(self.infd)
                if not more:
                    self._done.set()
                    return
                data += more
        self.protocol = protocol
        self.table.handshake(protocol, None)
        self.metrics = getattr(self.table, "metrics", _OFF)  # set up by the handshake
        self._metered = self.metrics.enabled
        self.codec = make_codec(protocol)
        self._send = self.codec.send
        if protocol == "imsg" and _is_socket(self.infd):
            self.outfd = self.infd  # smtpd <= 7.5 gives one socket, on fd 0 only
        self.codec.receive_data(data)

    # --- loop ---

    def serve(self) -> None:
        setup_logging()
        if self.outfd == 1:
            self.outfd = private_stdout()
        first = read_some(self.infd)
        if not first:
            return
        self._start(first)
        if self._done.is_set():
            return
        threading.Thread(target=self._watchdog, name="table-watchdog", daemon=True).start()
        self._spawn_reader()
        self._done.wait()

    def _spawn_reader(self) -> None:
        threading.Thread(target=self._reader, args=(self._generation,), daemon=True,
                         name=f"table-reader-{self._generation}").start()

    def _reader(self, generation: int) -> None:
        codec = self.codec
        assert codec is not None
        next_event, receive_data, infd = codec.next_event, codec.receive_data, self.infd
        done, dispatch = self._done, self._dispatch
        while True:
            try:
                event = next_event()
            except Exception as exc:  # a codec bug: never a dead reader that ignores EOF
                log.error("internal error parsing smtpd's input (%s): %d buffered bytes "
                          "dropped", type(exc).__name__, codec.discard())
                continue
            if event is None:
                if done.is_set():  # before each read, not each event: smtpd sends one
                    return  # request and waits, so nothing is buffered behind it
                try:  # read_some(), inlined: the hot path
                    data = _read(infd, READ_SIZE)
                except OSError as exc:
                    log.info("read error on fd %d (%s): treating it as EOF", infd, exc)
                    data = b""
                if not data:
                    done.set()
                    return
                receive_data(data)
                continue
            if type(event) is Request:
                dispatch(event)
            else:
                self._other(event)
            if generation != self._generation:
                return  # a handler of ours overran its deadline; another reader took over

    def _other(self, event: Event) -> None:
        assert self.codec is not None
        if isinstance(event, Hello):
            if event.table:
                relabel_logging(f"table {event.table}")
            assert self.protocol is not None
            self.table.handshake(self.protocol, event)
            try:
                self._write(self.codec.send(Ready(self.table.services)))
            except ValueError as exc:
                log.error("cannot register with smtpd: %s (add a handler)", exc)
            log.info("ready: %s protocol%s, serving %s", self.protocol,
                     f", smtpd {event.smtpd_version}" if event.smtpd_version else "",
                     ", ".join(self.table.services) or "nothing")
        elif isinstance(event, Malformed):
            log.error("malformed request from smtpd: %s", event.reason)
            if event.id is not None and event.op is not None:
                with self._lock:
                    self._write(self.codec.send(Answer(event.op, event.id,
                                                       Error("malformed request"))))
        elif isinstance(event, Ignored):
            log.debug("ignored %s", event.what)

    def _dispatch(self, request: Request) -> None:
        started = _monotonic()
        table = self.table
        request_id = request.id
        if self._abandoned and len(self._abandoned) >= MAX_STUCK:
            self._refuse(request, started)
            return
        metered = self._metered
        if metered:
            self.metrics.in_flight(1)
        inflight = self._inflight
        deadline = started + table.deadline
        # No lock: one dict store is atomic, and the watchdog iterates over a snapshot.
        inflight[request_id] = (request, deadline, True)
        try:
            reply = table.answer(request)
        except Exception as exc:  # answer() itself must never take the table down
            reply = table.failure(request, exc)
        if type(reply) not in REPLY_TYPES and isinstance(reply, Coroutine):
            self._dispatch_async(request, reply, deadline)
            return
        # _finish(), inlined: the hot path. acquire/release rather than ``with``: the same
        # lock, without looking up and calling __enter__ and __exit__.
        self._acquire()
        try:
            if inflight.pop(request_id, None) is None:
                self._late(request)
                return
            try:
                data = self._send(_answer(Answer, (request.op, request_id, reply)))
            except Exception as exc:  # e.g. a lone surrogate: smtpd still gets one reply
                data = self._unencodable(request, exc)
            if metered:  # before the write: counted by the time smtpd reads it
                self._account(request, reply, started)  # type: ignore[arg-type]
            try:  # write_all(), inlined for the one write that nearly always suffices
                written = _write(self.outfd, data)
            except OSError:
                written = 0  # write_all() below meets the error again, logs it, says gone
            if written != len(data) and not write_all(self.outfd, data[written:]):
                self._done.set()
        finally:
            self._release()

    def _refuse(self, request: Request, started: float) -> None:
        """Too many handlers stuck past their deadline: error, without calling one more."""
        reply = Error(f"{len(self._abandoned)} handlers are stuck past their deadline")
        if self._metered:
            self._account(request, reply, started, 0)
        with self._lock:
            self._write(self._reply(request, reply))

    def _reply(self, request: Request, reply: Reply) -> bytes:
        assert self.codec is not None
        try:
            return self.codec.send(_answer(Answer, (request.op, request.id, reply)))
        except Exception as exc:  # e.g. a lone surrogate: smtpd still gets one reply
            return self._unencodable(request, exc)

    def _unencodable(self, request: Request, exc: Exception) -> bytes:
        assert self.codec is not None
        log.error("%s: answer cannot be encoded (%s), answering error", request.describe(),
                  type(exc).__name__)
        return self.codec.send(Answer(request.op, request.id, Error("unencodable answer")))

    def _finish(self, request: Request, reply: Reply) -> None:
        """Write the reply unless the watchdog already answered this request."""
        with self._lock:
            entry = self._inflight.pop(request.id, None)
            if entry is None:
                self._late(request)
                return
            if self.metrics.enabled:
                self._account(request, reply, entry[1] - self.table.deadline)
            self._write(self._reply(request, reply))

    def _account(self, request: Request, reply: Reply, started: float, leaving: int = 1,
                 ) -> None:
        """Table metrics for one answered request (only called when they are on)."""
        metrics = self.metrics
        if leaving:
            metrics.in_flight(-leaving)
        metrics.answered(request.op.value, request.service_label,
                         _RESULTS.get(type(reply), "error"), _monotonic() - started)

    def _late(self, request: Request) -> None:
        """The watchdog answered already: the handler's answer is dropped."""
        self._abandoned.discard(request.id)
        log.warning("%s: late answer dropped (the deadline had passed)", request.describe())

    def _dispatch_async(self, request: Request, coro: Coroutine[Any, Any, Reply],
                        deadline: float) -> None:
        """An async handler's request (already counted in flight by _dispatch)."""
        ordered = self.protocol == "imsg"  # no ids on imsg: replies in request order
        with self._lock:
            if request.id not in self._inflight:  # answer() overran: answered already,
                coro.close()  # and a new entry would be answered twice (fatal to smtpd)
                return self._late(request)
            self._inflight[request.id] = (request, deadline, ordered)
        loop = self._event_loop()
        self._slots.acquire()  # backpressure: wait for a handler to end (reader thread)
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        self._tasks[request.id] = future  # cancelled by the watchdog at the deadline

        def release(_: Any) -> None:
            self._tasks.pop(request.id, None)
            self._slots.release()

        future.add_done_callback(release)
        if ordered:
            try:
                reply = future.result()
            except (Exception, concurrent.futures.CancelledError) as exc:
                reply = self.table.failure(request, exc)
            self._finish(request, reply)
            return

        def done(fut: Any) -> None:
            try:
                reply = fut.result()
            except (Exception, concurrent.futures.CancelledError) as exc:
                reply = self.table.failure(request, exc)
            self._finish(request, reply)

        future.add_done_callback(done)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="table-asyncio", daemon=True).start()
            self._loop = loop
        return self._loop

    def _watchdog(self) -> None:
        tick = min(0.05, self.table.deadline / 10)
        while not self._done.wait(tick):
            now = time.monotonic()
            cancel = []
            with self._lock:
                # list(): a snapshot taken atomically, as _dispatch adds entries unlocked
                late = [entry for entry in list(self._inflight.values()) if entry[1] <= now]
                for request, deadline, sync in late:
                    del self._inflight[request.id]
                    log.error("%s: no answer within %.1fs, answering error",
                              request.describe(), self.table.deadline)
                    if self.metrics.enabled:
                        self.metrics.deadline_missed(request.op.value, request.service_label)
                        self._account(request, Error("deadline"),
                                      deadline - self.table.deadline)
                    self._write(self._reply(request, Error("deadline exceeded")))
                    task = self._tasks.pop(request.id, None)
                    if task is not None:
                        cancel.append(task)  # an async handler: free what it holds
                    elif sync:
                        self._abandoned.add(request.id)
                        self._generation += 1
                        self._spawn_reader()
            for task in cancel:  # outside the lock: cancel() runs the done callbacks here
                task.cancel()


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def serve(table: Served, *, protocol: str | None = None, infd: int = 0, outfd: int = 1) -> None:
    Server(table, protocol=protocol, infd=infd, outfd=outfd).serve()
