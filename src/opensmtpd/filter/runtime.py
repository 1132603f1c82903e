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
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .events import Config, DataLine, Event, Malformed, Query, Report
from .protocol import FilterSide, encode

if TYPE_CHECKING:
    from .app import Filter

from ..stdio import private_stdout
from ..stdio import setup_logging as _setup_logging

log = logging.getLogger("opensmtpd.filter")
READ_SIZE = 1 << 16


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
        handle, receive, read = self.app.handle, self.side.receive_data, self._read
        while not self.closed:
            data = read()
            if not data:
                return
            self.write(b"".join(self._answer(handle, event) for event in receive(data)))

    def _answer(self, handle: Callable[[Event], list[str]], event: Event) -> bytes:
        """The bytes for one event; a query gets exactly one answer whatever happens."""
        try:
            return _encode(handle(event))
        except KeyboardInterrupt:
            raise
        except BaseException:  # a bug, SystemExit, an unencodable string: never die
            log.exception("internal error on %s", type(event).__name__)
            return _encode(_emergency(self.app, event))

    async def _serve_async(self) -> None:
        loop = asyncio.get_running_loop()
        eof: asyncio.Future[None] = loop.create_future()
        tails: dict[Any, asyncio.Task[None]] = {}

        def submit(event: Event) -> None:
            key = _key(event)
            prev = tails.get(key)
            task = loop.create_task(self._run(prev, event))
            tails[key] = task
            task.add_done_callback(lambda done: tails.pop(key, None)
                                   if tails.get(key) is done else None)

        def feed(data: bytes) -> None:
            if not data:
                if not eof.done():
                    eof.set_result(None)
                return
            for event in self.side.receive_data(data):
                submit(event)

        reader = threading.Thread(target=self._reader, args=(loop, feed), daemon=True,
                                  name="filter-reader")
        reader.start()
        await eof

    def _reader(self, loop: asyncio.AbstractEventLoop,
                feed: Callable[[bytes], None]) -> None:
        while True:
            data = self._read()
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are done
                loop.call_soon_threadsafe(feed, data)
            if not data:
                return

    async def _run(self, prev: asyncio.Task[None] | None, event: Event) -> None:
        if prev is not None:
            await asyncio.wait([prev])
        try:
            data = _encode(await self.app.handle_async(event))
        except KeyboardInterrupt:
            raise
        except BaseException:  # incl. CancelledError, SystemExit: the query is answered
            log.exception("internal error on %s", type(event).__name__)
            data = _encode(_emergency(self.app, event))
        self.write(data)


def _key(event: Event) -> Any:
    """Events of one session run in order; the handshake goes first of all."""
    if isinstance(event, (Report, Query, DataLine)):
        return (event.subsystem, event.session)
    if isinstance(event, Malformed) and event.query is not None:
        return (event.query.subsystem, event.query.session)
    return None


def _encode(lines: list[str]) -> bytes:
    return encode("\n".join(lines) + "\n") if lines else b""


def _emergency(app: Filter, event: Event) -> list[str]:
    """An answer when dispatch itself failed: a query still gets exactly one."""
    if isinstance(event, (Query, DataLine)):
        return app.handle(Malformed("internal error", "", event))
    if isinstance(event, Config):
        from .protocol import registration
        return registration(event, {}, ())
    return []


def serve(app: Filter, *, infd: int = 0, outfd: int = 1) -> None:
    Runtime(app, infd=infd, outfd=outfd).serve()
