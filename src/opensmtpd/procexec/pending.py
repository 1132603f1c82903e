"""The requests smtpd asked table-procexec, each until its one reply (sans-IO).

imsg has no ids and smtpd matches replies to requests by their order (table-protocols.md
§1.6): requests are kept in arrival order, which is also deadline order (one deadline
length), and leave only from the head, once answered. Each gets an id of ours for the
child. While the child is being (re)started, requests wait here, unsent, each until its
own deadline; the ids of requests that missed theirs are remembered for a while, so that
the child's late reply is recognised and dropped rather than taken for garbage.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..table.wire.events import Answer, Error, Reply, Request

# Requests that wait for a child being (re)started (down, starting, in its handshake), each
# until its own deadline; one more is answered -1 at once. smtpd <= 7.5 asks a table one
# request at a time (§1.6), so more than one only comes from another client.
MAX_WAITING = 256
EXPIRED_MEMORY = 256  # ids answered -1 at their deadline, remembered to spot late replies


@dataclass(slots=True)
class Pending:
    request: Request
    child_id: str  # the id the child sees (imsg has none: ours, unique per bridge)
    deadline: float
    sent: bool = False
    reply: Reply | None = None


class Requests:
    """The queue. ``entries`` (child id -> Pending, arrival order) is read directly on
    the bridge's hot path; everything that changes it goes through the methods."""

    def __init__(self) -> None:
        self.entries: dict[str, Pending] = {}
        self._expired: deque[str] = deque(maxlen=EXPIRED_MEMORY)
        self._numbers = itertools.count(secrets.randbits(30))

    def add(self, request: Request, deadline: float, child_id: Callable[[int], str]) -> Pending:
        entry = Pending(request, child_id(next(self._numbers)), deadline)
        self.entries[entry.child_id] = entry
        return entry

    def flush(self, out: bytearray, encode: Callable[[Answer], bytes]) -> None:
        """Move the replies of the answered requests at the head to ``out``, encoded:
        what smtpd can be told now, in its order."""
        entries = self.entries
        while entries:
            key = next(iter(entries))
            entry = entries[key]
            if entry.reply is None:
                return
            del entries[key]
            out += encode(Answer(entry.request.op, entry.request.id, entry.reply))

    def cannot_wait(self, entry: Pending, restart_at: float | None, now: float) -> str | None:
        """Why ``entry`` cannot wait for the child being (re)started, if it cannot
        (``restart_at``: when the next child starts, None while one is starting)."""
        waiting = sum(1 for e in self.entries.values() if e.reply is None and not e.sent)
        if waiting > MAX_WAITING:  # itself included
            return f"{MAX_WAITING} requests already wait for the child"
        if restart_at is not None and restart_at >= entry.deadline:
            return (f"the child is down and restarts in {restart_at - now:.2f}s, after "
                    f"this request's deadline")
        return None

    def unsent(self) -> list[Pending]:
        return [e for e in self.entries.values() if e.reply is None and not e.sent]

    def oldest_asked(self) -> Pending | None:
        """The oldest request the child was asked and has not answered."""
        return next((e for e in self.entries.values() if e.sent and e.reply is None), None)

    def next_deadline(self) -> float | None:
        for entry in self.entries.values():  # arrival order = deadline order
            if entry.reply is None:
                return entry.deadline
        return None

    def expire(self, now: float) -> list[Pending]:
        """Answer -1 what is due by ``now`` and return it (the caller logs each)."""
        due = []
        for entry in self.entries.values():
            if entry.deadline > now:
                break  # arrival order, all with the same deadline length
            if entry.reply is not None:
                continue
            entry.reply = Error("deadline exceeded")
            if entry.sent:
                self._expired.append(entry.child_id)
            due.append(entry)
        return due

    def expired(self, child_id: str) -> bool:
        """Was ``child_id`` answered -1 at its deadline (recently)?"""
        return child_id in self._expired

    def child_gone(self, spawn_at: float) -> tuple[int, int, int]:
        """The child is gone, the next one comes at ``spawn_at``: what it was asked is
        -1 (never resent: it may be what killed the child); what it was not asked waits,
        unless its deadline comes first. Returns (failed, late, waiting)."""
        failed = late = waiting = 0
        for entry in self.entries.values():
            if entry.reply is not None:
                continue
            if entry.sent:
                entry.reply = Error("the child exited")
                failed += 1
            elif entry.deadline <= spawn_at:
                entry.reply = Error("the next child starts after this request's deadline")
                late += 1
            else:
                waiting += 1
            entry.sent = False
        return failed, late, waiting
