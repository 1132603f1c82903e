"""Plain value classes shared by the three wire codecs: what smtpd asks, what a table answers."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .services import Service


class Op(str, enum.Enum):
    UPDATE = "update"
    CHECK = "check"
    LOOKUP = "lookup"
    FETCH = "fetch"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Request:
    """One request from smtpd.

    ``service`` is None when smtpd named a service this library does not know
    (``raw_service`` keeps what was on the wire). ``id`` is smtpd's id (native,
    2020) or a local sequence number (imsg, which has no ids).
    """

    op: Op
    id: str
    table: str
    service: Service | None = None
    key: str | None = None
    raw_service: str = ""


@dataclass(frozen=True, slots=True)
class Found:
    """A match (check: ``value`` is None) or a value (lookup, fetch)."""

    value: str | None = None


@dataclass(frozen=True, slots=True)
class NotFound:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    """A temporary failure: smtpd answers the SMTP client with a 4xx."""

    reason: str = "temporary failure"


@dataclass(frozen=True, slots=True)
class Updated:
    pass


Reply = Found | NotFound | Failed | Updated
REPLY_TYPES = (Found, NotFound, Failed, Updated)


_new = object.__new__
_SET_REQUEST = tuple(Request.__dict__[name].__set__
                     for name in ("op", "id", "table", "service", "key", "raw_service"))


def make_request(op: Op, request_id: str, table: str, service: Service | None = None,
                 key: str | None = None, raw_service: str = "") -> Request:
    """``Request(...)`` at half the cost (the codecs' hot path): fills the slots directly
    instead of going through the frozen dataclass's ``object.__setattr__`` calls."""
    request = _new(Request)
    set_op, set_id, set_table, set_service, set_key, set_raw = _SET_REQUEST
    set_op(request, op)
    set_id(request, request_id)
    set_table(request, table)
    set_service(request, service)
    set_key(request, key)
    set_raw(request, raw_service)
    return request


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request line or message that could not be parsed.

    ``id`` is set when the request id could still be read, so it can be answered.
    """

    reason: str
    id: str | None = None
    op: Op | None = None


@dataclass(frozen=True, slots=True)
class Hello:
    """The handshake is over: the table name, and the smtpd version when it was given."""

    table: str
    smtpd_version: str = ""
    config: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message that needs no answer (imsg CLOSE)."""

    what: str


Event = Request | Malformed | Hello | Ignored
