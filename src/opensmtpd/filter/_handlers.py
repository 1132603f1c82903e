"""What a filter registered, and its options: filled by ``Filter``, read by the
dispatcher. Names are checked here, when registered: smtpd exits on an unknown one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .wire.decisions import InvalidDecision, check_reply
from .wire.events import PHASES, REPORT_EVENTS, SUBSYSTEMS

Handler = Callable[..., Any]
DEFAULT_TEMPFAIL = "451 4.3.0 Temporary failure in a mail filter, try again later"
DEFAULT_DEADLINE = 30.0


@dataclass(frozen=True, slots=True)
class Options:
    """A filter's options, checked once (``Filter(...)``)."""

    name: str | None = None
    on_error: Literal["proceed", "tempfail"] = "proceed"
    tempfail_reply: str = DEFAULT_TEMPFAIL
    deadline: float = DEFAULT_DEADLINE
    max_sessions: int = 100_000

    def __post_init__(self) -> None:
        if self.on_error not in ("proceed", "tempfail"):
            raise ValueError("on_error must be 'proceed' or 'tempfail'")
        try:
            check_reply(self.tempfail_reply)
        except InvalidDecision as exc:
            raise ValueError(f"tempfail_reply: {exc}") from None
        if not self.tempfail_reply.startswith("4"):
            raise ValueError("tempfail_reply must be a 4xx reply")
        if not (isinstance(self.deadline, (int, float)) and self.deadline > 0):
            raise ValueError("deadline must be a positive number of seconds")
        if not (isinstance(self.max_sessions, int) and self.max_sessions >= 1):
            raise ValueError("max_sessions must be at least 1")
        object.__setattr__(self, "deadline", float(self.deadline))


class Registered:
    __slots__ = ("fn", "is_async", "name")

    def __init__(self, fn: Handler) -> None:
        if not callable(fn):
            raise TypeError(f"a handler must be callable, not {type(fn).__name__}")
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.name = getattr(fn, "__qualname__", repr(fn))


def names(chosen: Iterable[object], known: tuple[str, ...], what: str,
          example: str = "") -> list[str]:
    """Names checked at registration: smtpd exits on an unknown one."""
    result = []
    for name in chosen:
        if callable(name):
            raise TypeError(f"{what} names first, then the function: {example}")
        if name != "*" and name not in known:
            raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
        result.append(str(name))
    return result


class Handlers:
    """What is registered (filled by ``Filter``, read by ``Dispatcher``)."""

    __slots__ = ("config", "data_line", "evict", "malformed", "message", "phases",
                 "reports", "routes", "unknown")

    def __init__(self) -> None:
        self.reports: dict[tuple[str, str], list[Registered]] = {}
        self.phases: dict[str, Registered] = {}
        self.data_line: Registered | None = None
        self.message: Registered | None = None
        self.config: list[Registered] = []
        self.malformed: list[Registered] = []
        self.unknown: list[Registered] = []
        self.evict: list[Registered] = []
        self.routes: dict[tuple[str, str], tuple[Registered, ...]] = {}  # a cache

    def add_report(self, subsystem: str, event: str, registered: Registered) -> None:
        self.reports.setdefault((subsystem, event), []).append(registered)
        self.routes.clear()

    def route(self, subsystem: str, event: str) -> tuple[Registered, ...]:
        """The handlers of one event: its own, then those of ``*``."""
        key = (subsystem, event)
        route = self.routes.get(key)
        if route is None:
            route = tuple(self.reports.get(key, ())) + tuple(
                self.reports.get((subsystem, "*"), ()))
            if len(self.routes) < 4096:
                self.routes[key] = route
        return route

    @property
    def is_async(self) -> bool:
        handlers = [*self.phases.values(), *self.config, *self.malformed, *self.unknown,
                    *(h for hs in self.reports.values() for h in hs)]
        handlers += [h for h in (self.data_line, self.message) if h is not None]
        return any(h.is_async for h in handlers)


def check_phases(phases: Iterable[object]) -> list[str]:
    chosen = names(phases, PHASES, "filter phase", '@f.on_phase("mail-from")')
    if not chosen:
        raise ValueError("name at least one filter phase: @f.on_phase('mail-from')")
    for name in chosen:
        if name in ("*", "data-line"):
            raise ValueError("use on_data_line or on_message for data-line")
    return chosen


def check_reports(events: Iterable[object], subsystem: str) -> tuple[list[str], tuple[str, ...]]:
    """(events, subsystems) of ``on_report``; no event means ``*``."""
    chosen = names(events, REPORT_EVENTS, "report event",
                   '@f.on_report("link-connect")') or ["*"]
    subsystems = SUBSYSTEMS if subsystem == "*" else tuple(
        names([subsystem], SUBSYSTEMS, "subsystem"))
    return chosen, subsystems
