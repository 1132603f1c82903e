"""The 2020 module API of the seed (poolpOrg/py-opensmtpd), kept call-for-call.

    from opensmtpd import table
    def lookup(token, table_name, service, key):
        if service == "alias" and key == "root":
            return table.result(token, "gilles@poolp.org")
        return table.result(token)
    table.on_lookup(lookup)
    table.dispatch()

Callbacks answer by calling a reply function with their token; the answer may also
come later from another thread, within the deadline. Unlike the seed, the same file
runs on smtpd 6.8 (imsg), 7.6+ (native) and the 2020 dialect, and a callback that
raises or never answers yields a temporary error instead of killing smtpd. Built on
``Table``: ``failure(token)`` makes the request's handler raise TempFail.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ._table import DEFAULT_DEADLINE, Table, TempFail
from .wire.events import Op, Request
from .wire.services import ALL_BUT_AUTH

log = logging.getLogger("opensmtpd.table")

_callbacks: dict[Op, Callable[..., Any]] = {}
_slots: dict[str, _Slot] = {}
_answered = threading.Condition()


class _Slot:
    __slots__ = ("done", "request", "result")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.done = False
        self.result: Any = None


def _answer(token: str, result: Any) -> None:
    with _answered:
        slot = _slots.get(str(token))
        if slot is None:
            log.warning("reply for unknown or expired token %r dropped", str(token)[:32])
            return
        if slot.done:
            log.warning("second reply for token %r ignored", str(token)[:32])
            return
        slot.result, slot.done = result, True
        _answered.notify_all()


def boolean(token: str, found: bool) -> None:
    """Answer a check: match or no match."""
    slot = _slots.get(str(token))
    if slot is None or slot.request.op is Op.CHECK:
        _answer(token, bool(found))
    elif found:
        _answer(token, TempFail(f"boolean(True) cannot answer a {slot.request.op}: use "
                                "result()"))
    else:
        _answer(token, None)


def result(token: str, *values: str | None) -> None:
    """Answer a lookup/fetch with its value(s); no value (or None) means not found."""
    present = [v for v in values if v is not None]
    slot = _slots.get(str(token))
    if slot is not None and slot.request.op is Op.CHECK:
        _answer(token, bool(present))
    else:
        _answer(token, present or None)


def failure(token: str) -> None:
    """Answer with a temporary failure (smtpd answers 4xx; the sender retries)."""
    _answer(token, TempFail("failure"))


def updated(token: str) -> None:
    """Acknowledge an update."""
    _answer(token, None)


def on_update(cb: Callable[[str, str], Any]) -> None:
    """``cb(token, table_name)``."""
    _callbacks[Op.UPDATE] = cb


def on_check(cb: Callable[[str, str, Any, str], Any]) -> None:
    """``cb(token, table_name, service, key)``."""
    _callbacks[Op.CHECK] = cb


def on_lookup(cb: Callable[[str, str, Any, str], Any]) -> None:
    """``cb(token, table_name, service, key)``."""
    _callbacks[Op.LOOKUP] = cb


def on_fetch(cb: Callable[[str, str, Any], Any]) -> None:
    """``cb(token, table_name, service)``."""
    _callbacks[Op.FETCH] = cb


def _call(op: Op, request: Request) -> Any:
    cb = _callbacks.get(op)
    if cb is None:
        if op is Op.UPDATE:
            return None
        raise TempFail(f"no on_{op} callback")
    slot = _Slot(request)
    _slots[request.id] = slot
    try:
        if op is Op.UPDATE:
            cb(request.id, request.table)
        elif op is Op.FETCH:
            cb(request.id, request.table, request.service)
        else:
            cb(request.id, request.table, request.service, request.key)
        if not slot.done:
            with _answered:
                while not slot.done:  # the runtime's deadline bounds this wait
                    _answered.wait()
        if isinstance(slot.result, TempFail):  # failure(token): the one way to fail, raising
            raise slot.result
        return slot.result
    finally:
        _slots.pop(request.id, None)


def build(deadline: float = DEFAULT_DEADLINE) -> Table:
    """The Table the module API stands for: every service but auth, every operation."""
    table = Table(deadline=deadline)
    for op in (Op.CHECK, Op.LOOKUP, Op.FETCH):
        table.on(op, ALL_BUT_AUTH, _handler(op))
    table.update(_handler(Op.UPDATE))
    return table


def _handler(op: Op) -> Callable[..., Any]:
    def handler(*_key: str, request: Request) -> Any:
        return _call(op, request)
    return handler


def dispatch(protocol: str | None = None, deadline: float = DEFAULT_DEADLINE) -> None:
    """Serve smtpd until EOF with the registered callbacks."""
    build(deadline).run(protocol=protocol)
