"""The 2020 ``table-procexec`` dialect of the seed, both sides, sans-IO.

Reference: table-protocols.md §2 and §4. No handshake. Requests come in two forms::

    table|0.1|<ts>|<table>|<op>|<id>|<service>|<key>    named: the article, py/go-opensmtpd
    table|0.1|<ts>|<op>|<id>|<service>|<key>            unnamed: table-procexec @93055be9

The named form is the one the seed's article shows and both libraries it introduces
parse (go-opensmtpd exits on anything else): smtpd's end sends it unless asked for the
unnamed one. A table accepts both.

Replies: ``table-result|<id>|updated|found|not-found|failure`` or ``found|<value>``
(the libraries); the article writes ``table-response|…``, also accepted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ...wire import LineBuffer, decode, encode
from .events import (
    Answer,
    Error,
    Event,
    Found,
    Malformed,
    NotFound,
    Op,
    Open,
    Ready,
    Registered,
    Reply,
    Request,
    Updated,
)
from .services import Service

PROTOCOL_VERSION = "0.1"
FORMS = ("named", "unnamed")
REPLY_PREFIXES = ("table-result|", "table-response|")
_OPS = {op.value: op for op in Op}


def parse_request(line: str) -> Request | Malformed:
    fields = line.split("|")
    if len(fields) < 5 or fields[0] != "table":
        # never quote the line: it may be the tail of a key carrying a password
        return Malformed(f"not a table request ({len(line)} bytes, {line.count('|')} '|')")
    # The HEAD libraries put the table name before the op; procexec did not. In the
    # unnamed form field 4 is the id (hex), never an op: so a table named "check" works.
    named = len(fields) > 5 and fields[4] in _OPS
    table = fields[3] if named else ""
    rest = fields[4:] if named else fields[3:]
    op = _OPS.get(rest[0])
    if op is None:
        return Malformed(f"unknown operation {rest[0][:40]!r}")
    request_id = rest[1]
    if not request_id:
        return Malformed("empty request id", op=op)
    if fields[1] != PROTOCOL_VERSION:
        return Malformed(f"unsupported protocol version {fields[1][:20]!r}", id=request_id, op=op)
    if op is Op.UPDATE:
        return Request(op, request_id, table)
    if len(rest) < 3 or (op is not Op.FETCH and len(rest) < 4):
        return Malformed(f"{op} request with missing fields", id=request_id, op=op)
    raw_service = rest[2]
    key = "|".join(rest[3:]) if op is not Op.FETCH else None
    return Request(op, request_id, table, Service.from_name(raw_service), key, raw_service)


class TableSide:
    def __init__(self) -> None:
        self._lines = LineBuffer()
        self.table = ""

    def receive_data(self, data: bytes) -> None:
        self._lines.feed(data)

    def discard(self) -> int:
        return self._lines.discard()

    def next_event(self) -> Event | None:
        raw = self._lines.next_line()
        if raw is None:
            return None
        line = decode(raw)
        if self._lines.truncated:
            # cut: the last field may be a cut id, never echoed (a reply carries exactly
            # the id smtpd sent, or there is none)
            result = parse_request(line.rpartition("|")[0])
            return Malformed("request too long", id=getattr(result, "id", None),
                             op=getattr(result, "op", None))
        return parse_request(line)

    @staticmethod
    def send(event: Answer | Ready) -> bytes:
        """An Answer's reply line; nothing for Ready (the dialect has no handshake)."""
        if type(event) is Answer:
            return reply_line(*event)
        if isinstance(event, Ready):
            return b""
        raise TypeError(f"a table sends Answer or Ready, not {type(event).__name__}")


def reply_line(op: Op, request_id: str, reply: Reply) -> bytes:
    """``table-result|<id>|…``; a reply that does not fit ``op`` becomes ``failure``."""
    head = f"table-result|{request_id}|"
    if isinstance(reply, Updated) and op is Op.UPDATE:
        return encode(head + "updated\n")
    if op is not Op.UPDATE:
        if isinstance(reply, NotFound):
            return encode(head + "not-found\n")
        if isinstance(reply, Found):
            if op is Op.CHECK:
                return encode(head + "found\n")
            if reply.value and "\n" not in reply.value:
                return encode(f"{head}found|{reply.value}\n")
    return encode(head + "failure\n")


# --- smtpd's end (table-procexec) ---


class SmtpdSide:
    """table-procexec's end: requests in the ``named`` form (the article's, with the table
    name of each Request) or the ``unnamed`` one; ``next_event()`` gives ``Registered(())``
    once ``Open`` was sent (the dialect has no handshake), then an ``Answer`` per request
    in the order sent. Replies are judged as table-procexec judged them: anything
    unexpected is an ``Error`` reply, never an exception. A line that arrives while
    nothing is asked stays buffered, to be read as the next reply.

    ``clock`` gives the requests' timestamps (seconds); without one they carry 0.
    """

    def __init__(self, form: str = "named", clock: Callable[[], float] | None = None) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown 2020 form {form!r}; expected one of {', '.join(FORMS)}")
        self.form = form
        self._lines = LineBuffer()
        self._clock = clock
        self._sent: deque[tuple[Op, str]] = deque()
        self._opened = False

    def receive_data(self, data: bytes) -> None:
        self._lines.feed(data)

    def send(self, event: Open | Request) -> bytes:
        if isinstance(event, Open):
            self._opened = True
            return b""
        timestamp = f"{self._clock():.6f}" if self._clock is not None else "0.000000"
        self._sent.append((event.op, event.id))
        return request(event.op, event.id, event.service or event.raw_service, event.key,
                       timestamp, table=event.table if self.form == "named" else None)

    def next_event(self) -> Registered | Answer | None:
        if self._opened:
            self._opened = False
            return Registered(())
        if not self._sent:
            return None
        raw = self._lines.next_line()
        if raw is None:
            return None
        op, request_id = self._sent.popleft()
        return Answer(op, request_id, parse_reply(op, request_id, decode(raw)))



def request(op: Op, request_id: str, service: Service | str | None = None,
            key: str | None = None, timestamp: str = "0.000000", *,
            table: str | None = None) -> bytes:
    """The named form when ``table`` is given (the article's), else the unnamed one;
    ``service`` may be a name no smtpd has (a str)."""
    named = "" if table is None else f"{table}|"
    head = f"table|{PROTOCOL_VERSION}|{timestamp}|{named}{op.value}|{request_id}"
    if op is Op.UPDATE:
        return encode(head + "\n")
    assert service is not None
    name = service.value if isinstance(service, Service) else service
    tail = f"|{key}" if op in (Op.CHECK, Op.LOOKUP) else ""
    return encode(f"{head}|{name}{tail}\n")


def parse_reply(op: Op, request_id: str, line: str) -> Reply:
    """Judge a reply as table-procexec did: anything unexpected is a failure (-1)."""
    for head in REPLY_PREFIXES:
        prefix = f"{head}{request_id}|"
        if line.startswith(prefix):
            break
    else:
        return Error(f"unexpected reply {line[:80]!r}")
    rest = line[len(prefix):]
    if rest == "updated" and op is Op.UPDATE:
        return Updated()
    if rest == "not-found" and op is not Op.UPDATE:
        return NotFound()
    if rest == "found" and op is Op.CHECK:
        return Found()
    if rest.startswith("found|") and rest[6:] and op in (Op.LOOKUP, Op.FETCH):
        return Found(rest[6:])
    return Error("failure" if rest == "failure" else f"unexpected reply {rest[:40]!r}")
