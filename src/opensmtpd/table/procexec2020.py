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

from ..wire import LineBuffer, decode, encode
from .events import Event, Failed, Found, Malformed, NotFound, Op, Reply, Request, Updated
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
    def reply(op: Op, request_id: str, reply: Reply) -> bytes:
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


def request(op: Op, request_id: str, service: Service | None = None, key: str | None = None,
            timestamp: str = "0.000000", *, table: str | None = None) -> bytes:
    """The named form when ``table`` is given (the article's), else the unnamed one."""
    named = "" if table is None else f"{table}|"
    head = f"table|{PROTOCOL_VERSION}|{timestamp}|{named}{op.value}|{request_id}"
    if op is Op.UPDATE:
        return encode(head + "\n")
    assert service is not None
    tail = f"|{key}" if op in (Op.CHECK, Op.LOOKUP) else ""
    return encode(f"{head}|{service.value}{tail}\n")


def parse_reply(op: Op, request_id: str, line: str) -> Reply:
    """Judge a reply as table-procexec did: anything unexpected is a failure (-1)."""
    for head in REPLY_PREFIXES:
        prefix = f"{head}{request_id}|"
        if line.startswith(prefix):
            break
    else:
        return Failed(f"unexpected reply {line[:80]!r}")
    rest = line[len(prefix):]
    if rest == "updated" and op is Op.UPDATE:
        return Updated()
    if rest == "not-found" and op is not Op.UPDATE:
        return NotFound()
    if rest == "found" and op is Op.CHECK:
        return Found()
    if rest.startswith("found|") and rest[6:] and op in (Op.LOOKUP, Op.FETCH):
        return Found(rest[6:])
    return Failed("failure" if rest == "failure" else f"unexpected reply {rest[:40]!r}")
