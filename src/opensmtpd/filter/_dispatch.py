"""Routing and the error policy: what answers each event, written once for plain and
``async def`` handlers (no I/O: ``_runtime.py`` owns that).

``Dispatcher.dispatch(event)`` is a coroutine per event. A plain handler is called
inline; only an async one is awaited (under the deadline). So when every handler is
plain the coroutine never suspends, and the runtime drives it without an event loop.

A handler that raises, returns something smtpd would refuse, or (async) misses its
deadline never reaches smtpd: a report is dropped with a log line; a query is answered per
``on_error`` — ``proceed`` (the default) or ``tempfail`` (a 4xx: the client retries
later); a data line goes through unchanged (and with ``tempfail`` the message is refused
at commit).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from ._handlers import Handlers, Options, Registered
from ._session import OBSERVERS, Session, Sessions
from .wire.dataline import END, output_lines, unstuff
from .wire.decisions import PROCEED, Decision, InvalidDecision
from .wire.events import (
    REPORT_CLASSES,
    SMTP_IN,
    Config,
    DataLine,
    DataLines,
    Event,
    LinkDisconnect,
    Malformed,
    Query,
    Registration,
    Report,
    Result,
    UnknownReport,
)
from .wire.filter_side import FilterSide

log = logging.getLogger("opensmtpd.filter")

_KNOWN_REPORTS = frozenset(REPORT_CLASSES.values())
_QUIET_PHASES = frozenset(("quit", "rset", "noop", "help", "wiz"))  # nothing to refuse


class Throttle:
    """Log the first few of each kind of problem, then one in a thousand (smtpd syslogs
    every line a filter writes to stderr)."""

    def __init__(self, first: int = 10, every: int = 1000) -> None:
        self.first, self.every = first, every
        self.counts: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        """0 to stay silent, else how many of this kind so far."""
        count = self.counts.get(key, 0) + 1
        if len(self.counts) < 1024 or key in self.counts:
            self.counts[key] = count
        return count if count <= self.first or count % self.every == 0 else 0


class Dispatcher:
    """One pipe's dispatch: its ``FilterSide``, its sessions, the policy's answers."""

    def __init__(self, handlers: Handlers, options: Options) -> None:
        self.handlers = handlers
        self.options = options
        self.side = FilterSide()
        self.sessions = Sessions(options.max_sessions, self._evicted)
        self._live = self.sessions.live  # the same dicts, one lookup less per event
        self._routes = handlers.routes
        self.awaits = False  # set by the runtime when it serves on an event loop
        self._throttle = Throttle()
        reply = options.tempfail_reply
        self._tempfail = options.on_error == "tempfail"
        self._reject = Decision("reject", reply)
        self._disconnect = Decision("disconnect", "421" + reply[3:])

    @property
    def name(self) -> str | None:
        return self.options.name

    @property
    def is_async(self) -> bool:
        return self.handlers.is_async

    # --- one event ---

    def dispatch(self, event: Event) -> Coroutine[Any, Any, bytes]:
        """The bytes answering ``event`` (b"" for a report), as a coroutine."""
        kind = type(event)
        if kind in _KNOWN_REPORTS:
            return self._report(event, kind)  # type: ignore[arg-type]
        if kind is DataLine:
            return self._dataline(event)  # type: ignore[arg-type]
        if kind is Query:
            return self._query(event)  # type: ignore[arg-type]
        if kind is UnknownReport:
            return self._unknown(event)  # type: ignore[arg-type]
        if kind is Config:
            return self._config(event)  # type: ignore[arg-type]
        assert kind is Malformed
        return self._malformed(event)  # type: ignore[arg-type]

    async def _report(self, report: Report, kind: type[Report]) -> bytes:
        """A known event of smtp-in or smtp-out (the hot path: kept flat)."""
        subsystem = report.subsystem
        if kind is LinkDisconnect:
            session = self.sessions.end(subsystem, report.session)
            if session is None:  # smtp-out may disconnect a session never connected
                session = Session(subsystem, report.session)
        else:
            session = self._live.get((subsystem, report.session))
            if session is None:
                session = self.sessions.get(subsystem, report.session)
            update = OBSERVERS.get(kind)
            if update is not None:
                update(session, report)
        route = self._routes.get((subsystem, kind.event))
        if route is None:
            route = self.handlers.route(subsystem, kind.event)
        for registered in route:
            try:
                result = registered.fn(session, report)
                if registered.is_async:
                    await self._bounded(result)
            except Exception as exc:
                self._report_failed(registered, report, exc)
        return b""

    async def _bounded(self, result: Any) -> Any:
        """An async handler's result, awaited under the deadline."""
        coro: Coroutine[Any, Any, Any] = result
        if not self.awaits:  # no event loop to run it (registered after the start)
            coro.close()
            raise RuntimeError("async handler in a filter served without an event loop")
        deadline = self.options.deadline
        try:
            return await asyncio.wait_for(_contained(coro), deadline)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer within {deadline:g}s") from None

    async def _call(self, registered: Registered, *args: Any) -> Any:
        result = registered.fn(*args)
        return await self._bounded(result) if registered.is_async else result

    # --- reports ---

    async def _unknown(self, report: UnknownReport) -> bytes:
        session = self.sessions.find(report.subsystem, report.session)
        if session is None:
            session = Session(report.subsystem, report.session)
        for registered in (*self.handlers.unknown,
                           *self.handlers.route(report.subsystem, report.name)):
            try:
                await self._call(registered, session, report)
            except Exception as exc:
                self._report_failed(registered, report, exc)
        return b""

    def _report_failed(self, registered: Registered, report: Report,
                       exc: BaseException) -> None:
        count = self._throttle(f"report:{registered.name}:{report.name}")
        if count:
            log.error("%s %s handler %s raised %s: %s (event dropped; %d so far)",
                      report.subsystem, report.name, registered.name, type(exc).__name__,
                      safe(exc), count)

    # --- queries ---

    async def _query(self, query: Query) -> bytes:
        session = self._live.get((SMTP_IN, query.session))
        if session is None:
            session = self.sessions.get(SMTP_IN, query.session)
        registered = self.handlers.phases.get(query.phase)
        decision: Any = None
        if query.phase == "commit" and session.failed:
            # a data handler failed under on_error="tempfail": refuse the message even
            # when a commit handler exists (its lines went through unfiltered)
            decision = self.fallback(query.phase)
        elif registered is not None:
            try:
                decision = registered.fn(session, query)
                if registered.is_async:
                    decision = await self._bounded(decision)
            except Exception as exc:
                decision = self._failed(query, registered.name, exc)
        if query.phase == "commit":
            session.failed = False
        try:
            return self.side.send(Result(query, decision))
        except InvalidDecision as exc:
            count = self._throttle(f"invalid:{query.phase}")
            if count:
                log.error("%s: invalid decision (%s): answering %s (%d so far)", query.phase,
                          exc, self.options.on_error, count)
            return self.side.send(Result(query, self.fallback(query.phase)))

    def _failed(self, query: Query, name: str, exc: BaseException) -> Decision:
        # The auth parameter carries credentials: exception texts are not logged for it.
        count = self._throttle(f"phase:{name}:{query.phase}")
        if count:
            log.error("%s handler %s raised %s%s: answering %s (%d so far)", query.phase,
                      name, type(exc).__name__, "" if query.phase == "auth" else
                      f": {safe(exc)}", self.options.on_error, count)
        return self.fallback(query.phase)

    def fallback(self, phase: str) -> Decision:
        """What a query of ``phase`` is answered when its handler fails (``on_error``)."""
        if not self._tempfail or phase in _QUIET_PHASES:
            return PROCEED
        return self._disconnect if phase == "connect" else self._reject

    # --- data lines ---

    async def _dataline(self, query: DataLine) -> bytes:
        session = self._live.get((SMTP_IN, query.session))
        if session is None:
            session = self.sessions.get(SMTP_IN, query.session)
        message = self.handlers.message
        line = query.line
        if line == END:
            lines, session.message = session.message, None
            texts: Sequence[str] = ()
            if lines is not None and message is not None:
                try:
                    result = await self._call(message, session, lines)
                    texts = lines if result is None else output_lines(result, "")
                except Exception as exc:
                    texts = lines
                    self._data_failed(session, message.name, exc)
            return self.side.send(DataLines(query, texts, True))
        text = line[1:] if line[:1] == "." else line  # unstuffed (§4.3)
        if message is not None:
            if session.message is None:
                session.message = []
            session.message.append(text)
            return b""
        handler = self.handlers.data_line
        if handler is not None:
            try:
                result = handler.fn(session, text)
                if handler.is_async:
                    result = await self._bounded(result)
                if result is not None:
                    return self.side.send(DataLines(query, output_lines(result, text)))
            except Exception as exc:
                self._data_failed(session, handler.name, exc)
        return self.side.send(DataLines(query, (text,)))

    def _data_failed(self, session: Session, name: str, exc: BaseException) -> None:
        session.failed = True
        count = self._throttle(f"data:{name}")
        if count:
            then = "the message will be refused at commit" if self._tempfail \
                else "lines passed through unchanged"
            log.error("data handler %s raised %s: %s; %s (%d so far)", name,
                      type(exc).__name__, safe(exc), then, count)

    # --- the handshake, and what could not be parsed ---

    async def _config(self, config: Config) -> bytes:
        self.side.config = config  # the answers follow what this smtpd accepts
        for registered in self.handlers.config:
            try:
                await self._call(registered, config)
            except Exception as exc:
                log.error("config handler %s raised %s: %s", registered.name,
                          type(exc).__name__, safe(exc))
        reports, phases = self.subscriptions()
        for phase in sorted(p for p in phases if not config.accepts_phase(p)):
            if config.version is None:
                log.warning("smtpd version %r unknown: the %s handler is not registered "
                            "(smtpd >= 7.9 stops on it)", config.smtpd_version[:32], phase)
            else:
                log.warning("smtpd %s has no %s phase (registering it would stop smtpd): "
                            "the %s handler is not registered", config.version, phase, phase)
        if reports.get("smtp-out") and "smtp-out" not in config.subsystems:
            # normal for a filter on listeners only (filter-prometheus): not worth a line
            log.debug("smtpd announced no smtp-out subsystem: smtp-out events not registered "
                     "(attach the filter to a relay action: action … relay … filter NAME)")
        return self.side.send(Registration(reports, phases))

    def subscriptions(self) -> tuple[dict[str, set[str]], set[str]]:
        """What to register: report events per subsystem, and filter phases.

        link-disconnect comes along wherever anything is registered (it ends session
        state); commit comes along with data handlers under the tempfail policy.
        """
        handlers = self.handlers
        reports: dict[str, set[str]] = {}
        for subsystem, event in handlers.reports:
            reports.setdefault(subsystem, set()).add(event)
        phases = set(handlers.phases)
        if handlers.data_line or handlers.message:
            phases.add("data-line")
            if self._tempfail:
                phases.add("commit")
        if phases:
            reports.setdefault(SMTP_IN, set())
        for events in reports.values():
            events.add("link-disconnect")
        return reports, phases

    async def _malformed(self, event: Malformed) -> bytes:
        count = self._throttle(f"malformed:{event.reason[:40]}")
        if count:
            # Only the reason: a line may carry credentials (the auth phase parameter).
            log.warning("unparsed line from smtpd: %s (%d so far)", event.reason, count)
        for registered in self.handlers.malformed:
            try:
                await self._call(registered, event)
            except Exception as exc:
                log.error("malformed-line handler %s raised %s", registered.name,
                          type(exc).__name__)
        return self.answer_anyway(event)

    def answer_anyway(self, event: Event) -> bytes:
        """The policy's answer without any handler: what a query still gets when a line
        was malformed, or when dispatch itself failed (``_runtime.settle``)."""
        if isinstance(event, Malformed) and event.query is not None:
            event = event.query
        if isinstance(event, Query):
            return self.side.send(Result(event, self.fallback(event.phase)))
        if isinstance(event, DataLine):  # as received: smtpd waits for every line, and "."
            return self.side.send(DataLines(event, () if event.line == END
                                            else (unstuff(event.line),), event.line == END))
        if isinstance(event, Config):
            if self.side.config is None:
                self.side.config = event
            return self.side.send(Registration({}, ()))
        return b""

    # --- sessions dropped to stay in bounds ---

    def _evicted(self, session: Session) -> None:
        count = self._throttle("evict")
        if count:
            log.warning("more than %d live sessions: dropping the oldest (%d so far)",
                        self.sessions.limit, count)
        for registered in self.handlers.evict:
            try:
                result = registered.fn(session)
                if inspect.iscoroutine(result):  # evictions happen mid-dispatch: no await
                    result.close()
                    raise TypeError("evict handlers must be plain functions")
            except Exception as exc:
                log.error("evict handler %s raised %s: %s", registered.name,
                          type(exc).__name__, safe(exc))


def safe(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


async def _contained(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a handler so that SystemExit or CancelledError from it is a plain failure.

    Raised inside a task, SystemExit stops the whole event loop (and the filter, and
    smtpd with it), and CancelledError slips past ``except Exception``.
    """
    try:
        return await coro
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and getattr(task, "cancelling", lambda: 0)():
            raise  # cancelled from outside (the deadline): wait_for reports a timeout
        raise RuntimeError("handler raised CancelledError") from None
    except SystemExit:
        raise RuntimeError("handler raised SystemExit") from None
