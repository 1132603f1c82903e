"""Per-session state, keyed by (subsystem, session id) (filter-protocol.md §3: smtp-in
and smtp-out ids come from different processes).

A session starts with the first event naming it (smtp-out may report a disconnect with no
connect, or connect twice) and ends on link-disconnect. The table is bounded: past
``limit`` sessions the oldest is dropped, so lost disconnects cannot grow memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .wire.events import LinkAuth, LinkConnect, LinkIdentify, LinkTLS, Report, TxBegin, TxReset


class Session:
    """What the filter knows about one SMTP session.

    The link fields are filled from the report events the filter registered
    (link-connect, link-identify, link-tls, link-auth, tx-begin); ``state`` is free for
    handlers. ``username`` is strnvis-encoded by smtpd; it is never logged here.
    """

    __slots__ = ("dest", "failed", "fcrdns", "helo", "id", "message", "msgid", "rdns",
                 "src", "started", "state", "subsystem", "tls", "username")

    def __init__(self, subsystem: str, session_id: str) -> None:
        self.subsystem = subsystem
        self.id = session_id
        self.started: float | None = None  # link-connect timestamp
        self.rdns: str | None = None
        self.fcrdns: str | None = None
        self.src: str | None = None
        self.dest: str | None = None
        self.helo: str | None = None
        self.tls: str | None = None
        self.username: str | None = None  # after a successful AUTH
        self.msgid: str | None = None  # the open transaction
        self.state: dict[str, Any] = {}
        self.message: list[str] | None = None  # lines buffered for a message handler
        self.failed = False  # a data handler failed in this message

    def __repr__(self) -> str:
        return f"<Session {self.subsystem} {self.id}>"

    def observe(self, report: Report) -> None:
        """Update the link fields from one report event."""
        update = OBSERVERS.get(type(report))
        if update is not None:
            update(self, report)


def _connect(session: Session, report: LinkConnect) -> None:
    session.started = report.timestamp
    session.rdns, session.fcrdns = report.rdns, report.fcrdns
    session.src, session.dest = report.src, report.dest


def _identify(session: Session, report: LinkIdentify) -> None:
    session.helo = report.identity


def _tls(session: Session, report: LinkTLS) -> None:
    session.tls = report.tls


def _auth(session: Session, report: LinkAuth) -> None:
    if report.result == "pass":
        session.username = report.username


def _begin(session: Session, report: TxBegin) -> None:
    session.msgid = report.msgid


def _reset(session: Session, report: TxReset) -> None:
    session.msgid = None


OBSERVERS: dict[type[Report], Callable[[Session, Any], None]] = {
    LinkConnect: _connect, LinkIdentify: _identify, LinkTLS: _tls, LinkAuth: _auth,
    TxBegin: _begin, TxReset: _reset,
}


class Sessions:
    """The live sessions, oldest first."""

    __slots__ = ("evicted", "limit", "live", "on_evict")

    def __init__(self, limit: int = 100_000,
                 on_evict: Callable[[Session], None] | None = None) -> None:
        if limit < 1:
            raise ValueError("the session limit must be at least 1")
        self.limit = limit
        self.evicted = 0
        self.on_evict = on_evict  # told about each session dropped to stay in bounds
        self.live: dict[tuple[str, str], Session] = {}  # read-only outside this class

    def __len__(self) -> int:
        return len(self.live)

    def get(self, subsystem: str, session_id: str) -> Session:
        """The session, created on first sight."""
        key = (subsystem, session_id)
        session = self.live.get(key)
        if session is None:
            if len(self.live) >= self.limit:
                oldest = self.live.pop(next(iter(self.live)))
                self.evicted += 1
                if self.on_evict is not None:
                    self.on_evict(oldest)
            session = self.live[key] = Session(subsystem, session_id)
        return session

    def find(self, subsystem: str, session_id: str) -> Session | None:
        return self.live.get((subsystem, session_id))

    def end(self, subsystem: str, session_id: str) -> Session | None:
        """Forget a session (link-disconnect); None if it was not known."""
        return self.live.pop((subsystem, session_id), None)
