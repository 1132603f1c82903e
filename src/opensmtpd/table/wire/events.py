"""The events of the table protocols, shared by the three codecs and both ends.

What smtpd sends a table: ``Hello`` (the handshake is over), ``Request``, ``Malformed``,
``Ignored``. What a table sends smtpd (``TableSide.send``): ``Ready`` (its answer to
Hello) and ``Answer(op, id, reply)``, the reply being ``Found``, ``NotFound``, ``Error``
or ``Updated``. smtpd's end sends ``Open`` and ``Request`` (``SmtpdSide.send``) and reads
``Registered`` and ``Answer`` back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from .services import Service


class Op(str, enum.Enum):
    UPDATE = "update"
    CHECK = "check"
    LOOKUP = "lookup"
    FETCH = "fetch"

    def __str__(self) -> str:
        return self.value


class Request(NamedTuple):
    """One request from smtpd.

    ``service`` is None when smtpd named a service this library does not know
    (``raw_service`` keeps what was on the wire). ``id`` is smtpd's id (native,
    2020) or a local sequence number (imsg, which has no ids).

    A named tuple, not a dataclass, as ``Answer``: one is built for every request, and
    the codecs build it with ``tuple.__new__(Request, fields)``, about a third of the cost
    of a frozen dataclass's constructor.
    """

    op: Op
    id: str
    table: str
    service: Service | None = None
    key: str | None = None
    raw_service: str = ""

    @property
    def service_label(self) -> str:
        """The service as a metric label: a known name or ``unknown`` (a closed set)."""
        return self.service.value if self.service is not None else "unknown"

    def describe(self) -> str:
        """A log-safe description: auth keys carry cleartext passwords and are never shown."""
        what = f"{self.op} {self.service or self.raw_service}".rstrip()
        if self.key is None:
            return what
        if self.service is Service.AUTH:
            user = self.key.partition(":")[0]
            return f"{what} {user[:64]!r}:<password>"
        return f"{what} {self.key[:128]!r}"


@dataclass(frozen=True, slots=True)
class Found:
    """A match (check: ``value`` is None) or a value (lookup, fetch)."""

    value: str | None = None


@dataclass(frozen=True, slots=True)
class NotFound:
    pass


@dataclass(frozen=True, slots=True)
class Error:
    """A temporary failure (``error`` on smtpd's 7.6 wire): smtpd answers the SMTP client
    with a 4xx."""

    reason: str = "temporary failure"


@dataclass(frozen=True, slots=True)
class Updated:
    pass


Reply = Found | NotFound | Error | Updated
REPLY_TYPES = (Found, NotFound, Error, Updated)


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


# --- sent by a table (TableSide.send) and read by smtpd's end (SmtpdSide.next_event) ---


class Answer(NamedTuple):
    """The reply to request ``id`` (an operation ``op``). A named tuple, not a dataclass:
    one is built for every request, on the hot path."""

    op: Op
    id: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class Ready:
    """The table's answer to Hello: the services it registers (smtpd >= 7.6; the imsg
    OPEN acknowledgement carries none; the 2020 dialect has no handshake)."""

    services: tuple[Service, ...] = ()


# --- sent by smtpd's end (SmtpdSide.send) ---


@dataclass(frozen=True, slots=True)
class Open:
    """smtpd's handshake: the table's name and, on 7.6+, the version it announces."""

    table: str
    smtpd_version: str = "7.6.0-portable"


@dataclass(frozen=True, slots=True)
class Registered:
    """The handshake is over on smtpd's end: the services the table registered (none on
    imsg and in the 2020 dialect, which have no registration)."""

    services: tuple[Service, ...] = ()
