"""``Filter``: what a filter author writes against (registration and options).

    from opensmtpd.filter import Filter, reject

    f = Filter()

    @f.on_report("link-connect")
    def connected(session, event):
        session.state["ip"] = event.src

    @f.on_phase("mail-from")
    def mail_from(session, query):
        if query.param.endswith("@spam.test"):
            return reject("550 5.7.1 Not from you")
        # returning None proceeds

    f.run()

Handlers may be plain functions or ``async def``. What happens when one fails:
``_dispatch.py``; the process around it: ``_runtime.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ._dispatch import Dispatcher
from ._handlers import (
    DEFAULT_DEADLINE,
    DEFAULT_TEMPFAIL,
    Handler,
    Handlers,
    Options,
    Registered,
    check_phases,
    check_reports,
)
from ._runtime import answer, serve
from ._session import Sessions
from .wire.events import SMTP_IN, Config


class Filter:
    """A proc-exec filter: register handlers with the ``on_*`` decorators, then ``run()``.

    ``name``: how the process names itself in smtpd's log.
    ``on_error``: how a query whose handler failed is answered, ``"proceed"`` or
    ``"tempfail"`` (``tempfail_reply``, a 4xx; a disconnect with 421 at connect).
    ``deadline``: seconds an ``async`` handler may take before that policy applies
    (plain handlers run inline, in order: keep them quick).
    ``max_sessions``: bound of the session table (oldest dropped past it).
    Options are checked here (``ValueError``) and fixed for the filter's life.
    """

    def __init__(self, name: str | None = None, *,
                 on_error: Literal["proceed", "tempfail"] = "proceed",
                 tempfail_reply: str = DEFAULT_TEMPFAIL, deadline: float = DEFAULT_DEADLINE,
                 max_sessions: int = 100_000) -> None:
        self._options = Options(name, on_error, tempfail_reply, deadline, max_sessions)
        self._handlers = Handlers()
        self._dispatcher = Dispatcher(self._handlers, self._options)

    # --- options and state ---

    @property
    def name(self) -> str | None:
        return self._options.name

    @property
    def on_error(self) -> Literal["proceed", "tempfail"]:
        return self._options.on_error

    @property
    def tempfail_reply(self) -> str:
        return self._options.tempfail_reply

    @property
    def deadline(self) -> float:
        return self._options.deadline

    @property
    def sessions(self) -> Sessions:
        """The live sessions, keyed by (subsystem, session id)."""
        return self._dispatcher.sessions

    @property
    def config(self) -> Config | None:
        """What smtpd said in the handshake (None before it ends)."""
        return self._dispatcher.side.config

    @property
    def is_async(self) -> bool:
        """Whether any handler is ``async def`` (the filter then runs on asyncio)."""
        return self._handlers.is_async

    # --- registration ---

    def on_report(self, *events: str, subsystem: str = SMTP_IN) -> Callable[[Handler], Handler]:
        """``@f.on_report("link-connect", …)``: ``fn(session, event)`` for these report
        events (names, or ``*`` — also what no name means) of ``subsystem``
        (``smtp-in``, ``smtp-out`` or ``*`` for both)."""
        chosen, subsystems = check_reports(events, subsystem)

        def register(fn: Handler) -> Handler:
            registered = Registered(fn)
            for name in chosen:
                for sub in subsystems:
                    self._handlers.add_report(sub, name, registered)
            return fn
        return register

    def on_phase(self, *phases: str) -> Callable[[Handler], Handler]:
        """``@f.on_phase("mail-from", …)``: ``fn(session, query) -> Decision | None`` for
        these smtp-in filter phases (one handler per phase: the last one registered)."""
        chosen = check_phases(phases)

        def register(fn: Handler) -> Handler:
            registered = Registered(fn)
            for name in chosen:
                self._handlers.phases[name] = registered
            return fn
        return register

    def on_data_line(self, fn: Handler) -> Handler:
        """``fn(session, line) -> str | Iterable[str] | None`` for every message line,
        unstuffed (``None``: unchanged). The final ``.`` is the library's business."""
        if self._handlers.message is not None:
            raise ValueError("a filter has either a data-line or a message handler")
        self._handlers.data_line = Registered(fn)
        return fn

    def on_message(self, fn: Handler) -> Handler:
        """``fn(session, lines) -> Iterable[str] | None`` once per message, with all its
        lines unstuffed (headers smtpd adds first); ``None`` keeps the message."""
        if self._handlers.data_line is not None:
            raise ValueError("a filter has either a data-line or a message handler")
        self._handlers.message = Registered(fn)
        return fn

    def on_config(self, fn: Handler) -> Handler:
        """``fn(config)`` once the handshake is over, before registering."""
        self._handlers.config.append(Registered(fn))
        return fn

    def on_malformed(self, fn: Handler) -> Handler:
        """``fn(malformed)`` for every line that could not be parsed (does not register
        anything with smtpd)."""
        self._handlers.malformed.append(Registered(fn))
        return fn

    def on_unknown(self, fn: Handler) -> Handler:
        """``fn(session, event)`` for report events of unknown names or subsystems."""
        self._handlers.unknown.append(Registered(fn))
        return fn

    def on_evict(self, fn: Handler) -> Handler:
        """``fn(session)`` (a plain function) when a session is dropped, unended, because
        the table is full (``max_sessions``): its link-disconnect will not be seen."""
        self._handlers.evict.append(Registered(fn))
        return fn

    # --- running ---

    def run(self) -> None:
        """Serve smtpd on stdin/stdout until EOF."""
        serve(self._dispatcher)

    def feed(self, data: bytes) -> bytes:
        """smtpd's bytes in (any pieces), the filter's answers out, without I/O: what
        ``run()`` does with each read, for tests and tools. Async handlers are awaited on
        a loop of their own (not from inside a running loop)."""
        return answer(self._dispatcher, data)
