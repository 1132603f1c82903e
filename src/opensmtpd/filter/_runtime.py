"""The filter runtime: owns stdin/stdout (through ``opensmtpd.stdio``) and drives the
dispatch. It depends on ``Target`` (what it needs of a filter), never on the filter.

Invariants (DESIGN.md, filter-protocol.md §5): nothing but protocol reaches smtpd's
socket (a handler's print() goes to stderr, which smtpd logs); every query is answered
exactly once; only EOF on stdin ends the process (smtpd exits when a filter does).

Plain handlers run inline, in the order smtpd sent the events: the dispatch coroutines of
one read are driven without an event loop (they never suspend) and their answers written
together. With ``async def`` handlers the events run on an asyncio loop, in order per
session and concurrently across sessions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from ..stdio import private_stdout, read_some, setup_logging, write_all
from .wire.events import DataLine, Event, Malformed, Query, Report
from .wire.filter_side import FilterSide

log = logging.getLogger("opensmtpd.filter")
T = TypeVar("T")
# Async filters: events read but not yet answered. Past this many the reader stops
# reading until some are done, so a burst cannot grow memory (docs/limits.md). smtpd
# queues what it writes meanwhile; sync filters read only after answering anyway.
MAX_IN_FLIGHT = 1024


class Target(Protocol):
    """What the runtime needs of a filter."""

    side: FilterSide  # smtpd's bytes in, events out, answers encoded
    awaits: bool  # whether async handlers may be awaited (served on an event loop)

    @property
    def name(self) -> str | None: ...

    @property
    def is_async(self) -> bool: ...

    def dispatch(self, event: Event) -> Coroutine[Any, Any, bytes]: ...

    def answer_anyway(self, event: Event) -> bytes: ...


async def settle(target: Target, events: Iterable[Event]) -> bytes:
    """The one place where events become bytes for smtpd, whatever goes wrong.

    Anything raised while dispatching an event (a bug, SystemExit, an unencodable
    string) turns into the policy's answer (``answer_anyway``): a query still gets
    exactly one answer, a data line is passed on, a report gets nothing. Nothing raised
    here reaches the loop (smtpd exits when a filter does).
    """
    out = []
    for event in events:
        try:
            out.append(await target.dispatch(event))
            continue
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:
            log.error("internal error on %s: %s", type(event).__name__, type(exc).__name__)
            log.debug("the internal error", exc_info=True)  # not by default: it may quote data
        try:
            out.append(target.answer_anyway(event))
        except Exception as exc:
            log.error("no answer could be made for %s (%s)", type(event).__name__,
                      type(exc).__name__)
    return b"".join(out)


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (every handler plain), without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("dispatch suspended in a filter without async handlers")


def answer(target: Target, data: bytes) -> bytes:
    """smtpd's bytes in, the filter's answers out, without I/O (``Filter.feed``)."""
    target.side.receive_data(data)
    if not target.is_async:
        return drive(settle(target, target.side.next_events()))

    async def run() -> bytes:
        target.awaits = True
        try:
            return await settle(target, target.side.next_events())
        finally:
            target.awaits = False
    return asyncio.run(run())


class Runtime:
    def __init__(self, target: Target, *, infd: int = 0, outfd: int = 1) -> None:
        self.target = target
        self.infd, self.outfd = infd, outfd
        self.closed = False

    def write(self, data: bytes) -> None:
        if data and not self.closed and not write_all(self.outfd, data):
            self.closed = True

    def serve(self) -> None:
        name = self.target.name
        setup_logging(f"filter {name}" if name else None)  # None: the program's name
        if self.outfd == 1:
            self.outfd = private_stdout()
        if self.target.is_async:
            self.target.awaits = True
            asyncio.run(self._serve_async())
        else:
            self._serve_sync()

    def _serve_sync(self) -> None:
        target, side, infd = self.target, self.target.side, self.infd
        while not self.closed:
            data = read_some(infd)
            if not data:
                return
            side.receive_data(data)
            self.write(drive(settle(target, side.next_events())))

    async def _serve_async(self) -> None:
        loop = asyncio.get_running_loop()
        eof: asyncio.Future[None] = loop.create_future()
        tails: dict[Any, asyncio.Task[None]] = {}
        room = asyncio.Event()
        in_flight = 0

        def finished(key: Any, done: asyncio.Task[None]) -> None:
            nonlocal in_flight
            in_flight -= 1
            if in_flight < MAX_IN_FLIGHT:
                room.set()
            if tails.get(key) is done:
                del tails[key]

        def submit(event: Event) -> None:
            nonlocal in_flight
            key = _key(event)
            task = loop.create_task(self._run(tails.get(key), event))
            tails[key] = task
            in_flight += 1
            task.add_done_callback(lambda done: finished(key, done))

        async def feed(data: bytes) -> None:
            """One read's events submitted; returns (and lets the reader read on) once
            fewer than MAX_IN_FLIGHT events are unanswered."""
            if not data:
                if not eof.done():
                    eof.set_result(None)
                return
            self.target.side.receive_data(data)
            for event in self.target.side.next_events():
                submit(event)
            while in_flight >= MAX_IN_FLIGHT and not eof.done():
                room.clear()
                await room.wait()

        reader = threading.Thread(target=self._reader, args=(loop, feed), daemon=True,
                                  name="filter-reader")
        reader.start()
        await eof

    def _reader(self, loop: asyncio.AbstractEventLoop,
                feed: Callable[[bytes], Coroutine[Any, Any, None]]) -> None:
        while True:
            data = read_some(self.infd)
            try:
                asyncio.run_coroutine_threadsafe(feed(data), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):
                return  # the loop is closed or closing: we are done
            if not data:
                return

    async def _run(self, prev: asyncio.Task[None] | None, event: Event) -> None:
        if prev is not None:
            await asyncio.wait([prev])
        self.write(await settle(self.target, (event,)))


def _key(event: Event) -> Any:
    """Events of one session run in order; the handshake goes first of all."""
    if isinstance(event, (Report, Query, DataLine)):
        return (event.subsystem, event.session)
    if isinstance(event, Malformed) and event.query is not None:
        return (event.query.subsystem, event.query.session)
    return None


def serve(target: Target, *, infd: int = 0, outfd: int = 1) -> None:
    """Serve smtpd on ``infd``/``outfd`` (stdin/stdout) until EOF."""
    Runtime(target, infd=infd, outfd=outfd).serve()
