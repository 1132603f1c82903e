"""The filter: handlers per report event and filter phase, the error policy, and the
dispatch of one event to the lines that answer it (no I/O: runtime.py owns that).

    from opensmtpd.filter import Filter, reject

    f = Filter()

    @f.report("link-connect")
    def connected(session, event):
        session.state["ip"] = event.src

    @f.phase("mail-from")
    def mail_from(session, query):
        if query.param.endswith("@spam.test"):
            return reject("550 5.7.1 Not from you")
        # returning None proceeds

    f.run()

Handlers may be plain functions or ``async def``. A handler that raises, returns
something smtpd would refuse, or (async) misses its deadline never reaches smtpd:
a report is dropped with a log line; a query is answered per ``on_error`` — ``proceed``
(the default) or ``tempfail`` (a 4xx: the client retries later); a data line goes
through unchanged (and with ``tempfail`` the message is refused at commit).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Literal

from . import dataline, protocol
from .events import (
    PHASES,
    REPORT_CLASSES,
    REPORT_EVENTS,
    SMTP_IN,
    SUBSYSTEMS,
    Config,
    DataLine,
    Event,
    LinkDisconnect,
    Malformed,
    Query,
    Report,
    UnknownReport,
)
from .responses import InvalidResponse, check_reply, fit, wire
from .session import OBSERVERS, Session, Sessions

log = logging.getLogger("opensmtpd.filter")

Handler = Callable[..., Any]
DEFAULT_TEMPFAIL = "451 4.3.0 Temporary failure in a mail filter, try again later"
DEFAULT_DEADLINE = 30.0
_KNOWN_REPORTS = frozenset(REPORT_CLASSES.values())
_QUIET_PHASES = frozenset(("quit", "rset", "noop", "help", "wiz"))  # nothing to refuse
MIN_ROOM = 1024  # bytes of a data line per output line, whatever the ids' length


class _Wire(str):
    """An answer built here (the policy's), already valid: never a handler's str."""

    __slots__ = ()


class _Registered:
    __slots__ = ("fn", "is_async", "name")

    def __init__(self, fn: Handler) -> None:
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.name = getattr(fn, "__qualname__", repr(fn))


class _Throttle:
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


def _names(names: Iterable[str], known: tuple[str, ...], what: str) -> list[str]:
    chosen = list(names)
    for name in chosen:
        if name != "*" and name not in known:
            raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return chosen


class Filter:
    """A proc-exec filter: register handlers, then ``run()`` (or ``dispatch()``).

    ``on_error``: how a query whose handler failed is answered, ``"proceed"`` or
    ``"tempfail"`` (``tempfail_reply``, a 4xx; a disconnect with 421 at connect).
    ``deadline``: seconds an ``async`` handler may take before that policy applies
    (plain handlers run inline, in order: keep them quick).
    ``max_sessions``: bound of the session table (oldest dropped past it).
    """

    def __init__(self, name: str | None = None, *,
                 on_error: Literal["proceed", "tempfail"] = "proceed",
                 tempfail_reply: str = DEFAULT_TEMPFAIL, deadline: float = DEFAULT_DEADLINE,
                 max_sessions: int = 100_000) -> None:
        if on_error not in ("proceed", "tempfail"):
            raise ValueError("on_error must be 'proceed' or 'tempfail'")
        check_reply(tempfail_reply)
        if not tempfail_reply.startswith("4"):
            raise ValueError("tempfail_reply must be a 4xx reply")
        if not deadline > 0:
            raise ValueError("deadline must be a positive number of seconds")
        self.name = name
        self.on_error = on_error
        self.tempfail_reply = tempfail_reply
        self.deadline = float(deadline)
        self.sessions = Sessions(max_sessions, self._evicted)
        self.config: Config | None = None
        self._reports: dict[tuple[str, str], list[_Registered]] = {}
        self._phases: dict[str, _Registered] = {}
        self._data_line: _Registered | None = None
        self._message: _Registered | None = None
        self._on_config: list[_Registered] = []
        self._on_malformed: list[_Registered] = []
        self._on_unknown: list[_Registered] = []
        self._on_evict: list[_Registered] = []
        self._routes: dict[tuple[str, str], tuple[_Registered, ...]] = {}
        self._throttle = _Throttle()

    # --- registration ---

    def on_report(self, event: str, fn: Handler, *, subsystem: str = SMTP_IN) -> Handler:
        """``fn(session, event)`` for report ``event`` (a name or ``*``) of ``subsystem``
        (``smtp-in``, ``smtp-out`` or ``*`` for both)."""
        subsystems = SUBSYSTEMS if subsystem == "*" else _names([subsystem], SUBSYSTEMS,
                                                                 "subsystem")
        for name in _names([event], REPORT_EVENTS, "report event"):
            for sub in subsystems:
                self._reports.setdefault((sub, name), []).append(_Registered(fn))
        self._routes.clear()
        return fn

    def report(self, *events: str, subsystem: str = SMTP_IN) -> Callable[[Handler], Handler]:
        """Decorator form of ``on_report``; no event given means ``*``."""
        def register(fn: Handler) -> Handler:
            for event in events or ("*",):
                self.on_report(event, fn, subsystem=subsystem)
            return fn
        return register

    def on_phase(self, phase: str, fn: Handler) -> Handler:
        """``fn(session, query) -> Decision | None`` for filter ``phase`` (smtp-in)."""
        for name in _names([phase], PHASES, "filter phase"):
            if name in ("*", "data-line"):
                raise ValueError("use on_data_line() or on_message() for data-line")
            self._phases[name] = _Registered(fn)
        return fn

    def phase(self, *phases: str) -> Callable[[Handler], Handler]:
        """Decorator form of ``on_phase``."""
        def register(fn: Handler) -> Handler:
            for phase in phases:
                self.on_phase(phase, fn)
            return fn
        return register

    def on_data_line(self, fn: Handler) -> Handler:
        """``fn(session, line) -> str | Iterable[str] | None`` for every message line,
        unstuffed (``None``: unchanged). The final ``.`` is the library's business."""
        if self._message is not None:
            raise ValueError("a filter has either a data-line or a message handler")
        self._data_line = _Registered(fn)
        return fn

    data_line = on_data_line

    def on_message(self, fn: Handler) -> Handler:
        """``fn(session, lines) -> Iterable[str] | None`` once per message, with all its
        lines unstuffed (headers smtpd adds first); ``None`` keeps the message."""
        if self._data_line is not None:
            raise ValueError("a filter has either a data-line or a message handler")
        self._message = _Registered(fn)
        return fn

    message = on_message

    def on_config(self, fn: Handler) -> Handler:
        """``fn(config)`` once the handshake is over, before registering."""
        self._on_config.append(_Registered(fn))
        return fn

    def on_malformed(self, fn: Handler) -> Handler:
        """``fn(malformed)`` for every line that could not be parsed (does not register
        anything with smtpd)."""
        self._on_malformed.append(_Registered(fn))
        return fn

    def on_unknown(self, fn: Handler) -> Handler:
        """``fn(session, event)`` for report events of unknown names or subsystems."""
        self._on_unknown.append(_Registered(fn))
        return fn

    def on_evict(self, fn: Handler) -> Handler:
        """``fn(session)`` when a session is dropped, unended, because the table is full
        (``max_sessions``): its link-disconnect will not be seen."""
        self._on_evict.append(_Registered(fn))
        return fn

    def _evicted(self, session: Session) -> None:
        count = self._throttle("evict")
        if count:
            log.warning("more than %d live sessions: dropping the oldest (%d so far)",
                        self.sessions.limit, count)
        for registered in self._on_evict:
            try:
                registered.fn(session)
            except Exception as exc:
                log.error("evict handler %s raised %s: %s", registered.name,
                          type(exc).__name__, _safe(exc))

    @property
    def is_async(self) -> bool:
        handlers = [*self._phases.values(), *self._on_config, *self._on_malformed,
                    *self._on_unknown, *(h for hs in self._reports.values() for h in hs)]
        handlers += [h for h in (self._data_line, self._message) if h is not None]
        return any(h.is_async for h in handlers)

    def subscriptions(self) -> tuple[dict[str, set[str]], set[str]]:
        """What to register: report events per subsystem, and filter phases.

        link-disconnect comes along wherever anything is registered (it ends session
        state); commit comes along with data handlers under the tempfail policy.
        """
        reports: dict[str, set[str]] = {}
        for subsystem, event in self._reports:
            reports.setdefault(subsystem, set()).add(event)
        phases = set(self._phases)
        if self._data_line or self._message:
            phases.add("data-line")
            if self.on_error == "tempfail":
                phases.add("commit")
        if phases:
            reports.setdefault(SMTP_IN, set())
        for events in reports.values():
            events.add("link-disconnect")
        return reports, phases

    # --- dispatch (sync) ---

    def handle(self, event: Event) -> list[str]:
        """The lines answering ``event`` (plain handlers only; see ``handle_async``)."""
        kind = type(event)
        if kind in _KNOWN_REPORTS:
            self._report(event, kind)  # type: ignore[arg-type]
            return []
        if kind is Query:
            return self._query(event)  # type: ignore[arg-type]
        if kind is DataLine:
            return self._dataline(event)  # type: ignore[arg-type]
        if kind is UnknownReport:
            self._unknown(event)  # type: ignore[arg-type]
            return []
        if isinstance(event, Config):
            return self._config(event)
        assert isinstance(event, Malformed)
        return self._malformed(event)

    def _route(self, subsystem: str, event: str) -> tuple[_Registered, ...]:
        key = (subsystem, event)
        route = self._routes.get(key)
        if route is None:
            route = tuple(self._reports.get(key, ())) + tuple(
                self._reports.get((subsystem, "*"), ()))
            if len(self._routes) < 4096:
                self._routes[key] = route
        return route

    def _session_of(self, report: Report) -> Session:
        if type(report) is LinkDisconnect:
            ended = self.sessions.end(report.subsystem, report.session)
            return ended if ended is not None else Session(report.subsystem, report.session)
        if type(report) is UnknownReport:
            known = self.sessions.find(report.subsystem, report.session)
            return known if known is not None else Session(report.subsystem, report.session)
        session = self.sessions.get(report.subsystem, report.session)
        session.observe(report)
        return session

    def _report(self, report: Report, kind: type[Report]) -> None:
        """A known event of smtp-in or smtp-out (the hot path: kept flat)."""
        subsystem = report.subsystem
        if kind is LinkDisconnect:
            session = self.sessions.end(subsystem, report.session)
            if session is None:
                session = Session(subsystem, report.session)
        else:
            session = self.sessions.live.get((subsystem, report.session))
            if session is None:
                session = self.sessions.get(subsystem, report.session)
            update = OBSERVERS.get(kind)
            if update is not None:
                update(session, report)
        route = self._routes.get((subsystem, kind.event))
        if route is None:
            route = self._route(subsystem, kind.event)
        for registered in route:
            try:
                registered.fn(session, report)
            except Exception as exc:
                self._report_failed(registered, report, exc)

    def _unknown(self, report: UnknownReport) -> None:
        session = self._session_of(report)
        for registered in (*self._on_unknown, *self._route(report.subsystem, report.name)):
            try:
                registered.fn(session, report)
            except Exception as exc:
                self._report_failed(registered, report, exc)

    def _report_failed(self, registered: _Registered, report: Report,
                       exc: BaseException) -> None:
        count = self._throttle(f"report:{registered.name}:{report.name}")
        if count:
            log.error("%s %s handler %s raised %s: %s (event dropped; %d so far)",
                      report.subsystem, report.name, registered.name, type(exc).__name__,
                      _safe(exc), count)

    def _query(self, query: Query) -> list[str]:
        session = self.sessions.get(SMTP_IN, query.session)
        registered = self._phases.get(query.phase)
        if registered is None or (query.phase == "commit" and session.failed):
            # a data handler failed under on_error="tempfail": refuse the message even
            # when a commit handler exists (its lines went through unfiltered)
            return [self._answer(query, session, self._default(query, session))]
        try:
            decision = registered.fn(session, query)
        except Exception as exc:
            return [self._answer(query, session, self._failed(query, registered.name, exc))]
        return [self._answer(query, session, decision)]

    def _default(self, query: Query, session: Session) -> Any:
        if query.phase == "commit" and session.failed:
            return self._fallback(query.phase)
        return None

    def _failed(self, query: Query, name: str, exc: BaseException) -> _Wire:
        # The auth parameter carries credentials: exception texts are not logged for it.
        count = self._throttle(f"phase:{name}:{query.phase}")
        if count:
            log.error("%s handler %s raised %s%s: answering %s (%d so far)", query.phase,
                      name, type(exc).__name__, "" if query.phase == "auth" else
                      f": {_safe(exc)}", self.on_error, count)
        return self._fallback(query.phase)

    def policy_answer(self, phase: str) -> str:
        """What a query of ``phase`` is answered when its handler fails (``on_error``)."""
        return self._fallback(phase)

    def _fallback(self, phase: str) -> _Wire:
        """The policy's answer, already in wire form."""
        if self.on_error == "proceed" or phase in _QUIET_PHASES:
            return _Wire("proceed")
        if phase == "connect":
            return _Wire("disconnect|421" + self.tempfail_reply[3:])
        return _Wire("reject|" + self.tempfail_reply)

    def _answer(self, query: Query, session: Session, decision: Any) -> str:
        head = f"filter-result|{protocol.order(query.version, query.session, query.token)}"
        if query.phase == "commit":
            session.failed = False
        if type(decision) is _Wire:  # the policy's answer, valid by construction
            return f"{head}|{decision}"
        try:
            answer = wire(decision, query.phase, report_allowed=self._report_allowed())
            return fit(head, answer, protocol.max_line(query.version))
        except InvalidResponse as exc:
            count = self._throttle(f"invalid:{query.phase}")
            if count:
                log.error("%s: invalid decision (%s): answering %s (%d so far)", query.phase,
                          exc, self.on_error, count)
            return f"{head}|{self._fallback(query.phase)}"

    def _report_allowed(self) -> bool:
        return self.config is not None and self.config.accepts_report_decision

    def _dataline(self, query: DataLine) -> list[str]:
        session = self.sessions.get(SMTP_IN, query.session)
        if query.line == dataline.END:
            lines = session.message
            session.message = None
            texts: list[str] = []
            if lines is not None and self._message is not None:
                try:
                    result = self._message.fn(session, lines)
                    texts = lines if result is None else dataline.output_lines(result, "")
                except Exception as exc:
                    texts = lines
                    self._data_failed(session, self._message.name, exc)
            return self._data_out(query, [*texts, None])
        text = dataline.unstuff(query.line)
        if self._message is not None:
            if session.message is None:
                session.message = []
            session.message.append(text)
            return []
        if self._data_line is None:
            return self._data_out(query, [text])
        try:
            texts = dataline.output_lines(self._data_line.fn(session, text), text)
        except Exception as exc:
            texts = [text]
            self._data_failed(session, self._data_line.name, exc)
        return self._data_out(query, texts)

    def _data_failed(self, session: Session, name: str, exc: BaseException) -> None:
        session.failed = True
        count = self._throttle(f"data:{name}")
        if count:
            then = "the message will be refused at commit" if self.on_error == "tempfail" \
                else "lines passed through unchanged"
            log.error("data handler %s raised %s: %s; %s (%d so far)", name,
                      type(exc).__name__, _safe(exc), then, count)

    def _data_out(self, query: DataLine, texts: Sequence[str | None]) -> list[str]:
        """``filter-dataline`` lines: stuffed, cut to what smtpd takes, ``None`` -> ``.``."""
        head = f"filter-dataline|{protocol.order(query.version, query.session, query.token)}|"
        # ids far longer than smtpd's 16 digits must not split a line into thousands
        room = max(protocol.max_line(query.version) - len(protocol.encode(head)), MIN_ROOM)
        out = []
        for text in texts:
            if text is None:
                out.append(head + dataline.END)
            elif len(text) < 512 and text[:1] != ".":
                out.append(head + text)
            else:
                out.extend(head + piece for piece in dataline.for_smtpd(text, room))
        return out

    def _config(self, config: Config) -> list[str]:
        self.config = config
        for registered in self._on_config:
            try:
                result = registered.fn(config)
                if inspect.isawaitable(result):
                    log.error("config handler %s is async: not supported, ignored",
                              registered.name)
                    if asyncio.iscoroutine(result):
                        result.close()
            except Exception as exc:
                log.error("config handler %s raised %s: %s", registered.name,
                          type(exc).__name__, _safe(exc))
        reports, phases = self.subscriptions()
        for phase in sorted(p for p in phases if not config.accepts_phase(p)):
            if config.version is None:
                log.warning("smtpd version %r unknown: the %s handler is not registered "
                            "(smtpd >= 7.9 stops on it)", config.smtpd_version[:32], phase)
            else:
                log.warning("smtpd %s has no %s phase (registering it would stop smtpd): "
                            "the %s handler is not registered", config.version, phase, phase)
        if reports.get("smtp-out") and "smtp-out" not in config.subsystems:
            log.info("smtpd announced no smtp-out subsystem: smtp-out events not registered "
                     "(attach the filter to a relay action: action … relay … filter NAME)")
        return protocol.registration(config, reports, phases)

    def _malformed(self, event: Malformed) -> list[str]:
        count = self._throttle(f"malformed:{event.reason[:40]}")
        if count:
            # Only the reason: a line may carry credentials (the auth phase parameter).
            log.warning("unparsed line from smtpd: %s (%d so far)", event.reason, count)
        for registered in self._on_malformed:
            try:
                registered.fn(event)
            except Exception as exc:
                log.error("malformed-line handler %s raised %s", registered.name,
                          type(exc).__name__)
        query = event.query
        if isinstance(query, DataLine):
            return self._data_out(query, [dataline.unstuff(query.line)]
                                  if query.line != dataline.END else [None])
        if isinstance(query, Query):
            head = f"filter-result|{protocol.order(query.version, query.session, query.token)}"
            return [f"{head}|{self._fallback(query.phase)}"]
        return []

    # --- dispatch (async) ---

    async def handle_async(self, event: Event) -> list[str]:
        """``handle`` for filters with ``async def`` handlers (awaited under the deadline)."""
        if isinstance(event, Query):
            return await self._query_async(event)
        if isinstance(event, DataLine):
            return await self._dataline_async(event)
        if isinstance(event, Report):
            session = self._session_of(event)
            handlers = list(self._route(event.subsystem, event.name))
            if type(event) is UnknownReport:
                handlers = self._on_unknown + handlers
            for registered in handlers:
                try:
                    await self._await(registered, session, event)
                except Exception as exc:
                    self._report_failed(registered, event, exc)
            return []
        return self.handle(event)

    async def _await(self, registered: _Registered, *args: Any) -> Any:
        if not registered.is_async:
            return registered.fn(*args)
        coro: Coroutine[Any, Any, Any] = registered.fn(*args)
        try:
            return await asyncio.wait_for(_contained(coro), self.deadline)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer within {self.deadline:g}s") from None

    async def _query_async(self, query: Query) -> list[str]:
        registered = self._phases.get(query.phase)
        if registered is None or not registered.is_async:
            return self._query(query)
        session = self.sessions.get(SMTP_IN, query.session)
        if query.phase == "commit" and session.failed:
            return [self._answer(query, session, self._default(query, session))]
        try:
            decision = await self._await(registered, session, query)
        except Exception as exc:
            decision = self._failed(query, registered.name, exc)
        return [self._answer(query, session, decision)]

    async def _dataline_async(self, query: DataLine) -> list[str]:
        handler = self._message if self._message is not None else self._data_line
        if handler is None or not handler.is_async:
            return self._dataline(query)
        session = self.sessions.get(SMTP_IN, query.session)
        if handler is self._message:
            if query.line != dataline.END:
                return self._dataline(query)  # buffered
            lines = session.message or []
            session.message = None
            try:
                result = await self._await(handler, session, lines)
                texts = lines if result is None else dataline.output_lines(result, "")
            except Exception as exc:
                texts = lines
                self._data_failed(session, handler.name, exc)
            return self._data_out(query, [*texts, None])
        if query.line == dataline.END:
            return self._data_out(query, [None])
        text = dataline.unstuff(query.line)
        out: list[str | None]
        try:
            out = [*dataline.output_lines(await self._await(handler, session, text), text)]
        except Exception as exc:
            out = [text]
            self._data_failed(session, handler.name, exc)
        return self._data_out(query, out)

    # --- running ---

    def run(self) -> None:
        """Serve smtpd on stdin/stdout until EOF."""
        from .runtime import serve
        serve(self)

    dispatch = run


def _safe(exc: BaseException) -> str:
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
