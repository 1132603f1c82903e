"""The filter runtime: owns stdin/stdout and runs the dispatch loop.

Invariants (DESIGN.md, filter-protocol.md §5): nothing but protocol reaches smtpd's
socket (a handler's print() goes to stderr, which smtpd logs); every query is answered
exactly once; only EOF on stdin ends the process (smtpd exits when a filter does).

Plain handlers run inline, in the order smtpd sent the events; the answers produced by
one read are written together. With ``async def`` handlers the events run on an asyncio
loop, in order per session and concurrently across sessions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .events import Config, DataLine, Event, Malformed, Query, Report
from .protocol import FilterSide, encode, order, registration

if TYPE_CHECKING:
    from .app import Filter

from ..stdio import private_stdout
from ..stdio import setup_logging as _setup_logging

log = logging.getLogger("opensmtpd.filter")
READ_SIZE = 1 << 16
# Async filters: events read but not yet answered. Past this many the reader stops
# reading until some are done, so a burst cannot grow memory (docs/limits.md). smtpd
# queues what it writes meanwhile; sync filters read only after answering anyway.
MAX_IN_FLIGHT = 1024


def setup_logging(name: str | None = None) -> None:
    _setup_logging(f"filter {name}" if name else "opensmtpd.filter")


class Runtime:
    def __init__(self, app: Filter, *, infd: int = 0, outfd: int = 1) -> None:
        self.app = app
        self.infd, self.outfd = infd, outfd
        self.side = FilterSide()
        self.closed = False

    def _read(self) -> bytes:
        try:
            return os.read(self.infd, READ_SIZE)
        except OSError as exc:
            log.info("read error on fd %d (%s): treating as EOF", self.infd, exc)
            return b""

    def write(self, data: bytes) -> None:
        if not data or self.closed:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.outfd, view):]
        except OSError as exc:
            log.info("smtpd closed the connection (%s)", exc)
            self.closed = True

    def serve(self) -> None:
        setup_logging(self.app.name)
        if self.outfd == 1:
            self.outfd = private_stdout()
        if self.app.is_async:
            asyncio.run(self._serve_async())
        else:
            self._serve_sync()

    def _serve_sync(self) -> None:
        handle, read = self.app.handle, self._read
        while not self.closed:
            data = read()
            if not data:
                return
            self.write(b"".join(settle(self.app, event, handle)
                                for event in self._events(data)))

    def _events(self, data: bytes) -> list[Event]:
        try:
            return self.side.receive_data(data)
        except Exception as exc:  # a parser bug: drop the input, never the process
            log.error("internal error parsing smtpd's input (%s): %d buffered bytes dropped",
                      type(exc).__name__, self.side.discard())
            return []

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
            for event in self._events(data):
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
            data = self._read()
            try:
                asyncio.run_coroutine_threadsafe(feed(data), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):
                return  # the loop is closed or closing: we are done
            if not data:
                return

    async def _run(self, prev: asyncio.Task[None] | None, event: Event) -> None:
        if prev is not None:
            await asyncio.wait([prev])
        lines: list[str] | None
        try:
            lines = await self.app.handle_async(event)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # incl. CancelledError, SystemExit: answered below
            log.error("internal error on %s: %s", type(event).__name__, type(exc).__name__)
            lines = None
        self.write(settle(self.app, event, lambda _: lines))


def _key(event: Event) -> Any:
    """Events of one session run in order; the handshake goes first of all."""
    if isinstance(event, (Report, Query, DataLine)):
        return (event.subsystem, event.session)
    if isinstance(event, Malformed) and event.query is not None:
        return (event.query.subsystem, event.query.session)
    return None


def _encode(lines: list[str]) -> bytes:
    return encode("\n".join(lines) + "\n") if lines else b""


def settle(app: Filter, event: Event,
           handle: Callable[[Event], list[str] | None]) -> bytes:
    """The one place where an event becomes bytes for smtpd, whatever goes wrong.

    ``handle`` gives the event's lines (None: dispatch already failed). Any exception
    there, or lines that cannot be encoded, turn into the policy's answer: a query
    still gets exactly one answer, a data line is passed on, a report gets nothing.
    Nothing raised here reaches the loop (smtpd exits when a filter does).
    """
    try:
        lines = handle(event)
        if lines is not None:
            return _encode(lines)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a bug, SystemExit, an unencodable string: never die
        log.error("internal error on %s: %s", type(event).__name__, type(exc).__name__)
        log.debug("the internal error", exc_info=True)  # not by default: it may quote data
    try:
        return _encode(_emergency(app, event))
    except Exception as exc:
        log.error("no answer could be made for %s (%s)", type(event).__name__,
                  type(exc).__name__)
        return b""


def _emergency(app: Filter, event: Event) -> list[str]:
    """An answer when dispatch itself failed: a query still gets exactly one."""
    if isinstance(event, Malformed) and event.query is not None:
        event = event.query
    if isinstance(event, Query):
        head = f"filter-result|{order(event.version, event.session, event.token)}"
        return [f"{head}|{app.policy_answer(event.phase)}"]
    if isinstance(event, DataLine):
        head = f"filter-dataline|{order(event.version, event.session, event.token)}"
        return [f"{head}|{event.line}"]  # as received: already stuffed, "." included
    if isinstance(event, Config):
        return registration(event, {}, ())
    return []


def serve(app: Filter, *, infd: int = 0, outfd: int = 1) -> None:
    Runtime(app, infd=infd, outfd=outfd).serve()
