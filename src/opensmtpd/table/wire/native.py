"""The native table protocol of smtpd >= 7.6 ("0.1"), both sides, sans-IO.

Reference: table-protocols.md §3 and lab-7.6 REPORT §2.
smtpd writes ``config|…`` lines then ``config|ready``; the table answers
``register|<service>``… ``register|ready``. Requests::

    table|0.1|<ts>|<table>|update|<id>
    table|0.1|<ts>|<table>|check|<service>|<id>|<key>
    table|0.1|<ts>|<table>|lookup|<service>|<id>|<key>
    table|0.1|<ts>|<table>|fetch|<service>|<id>

Replies are ``<op>-result|<id>|…``; smtpd fatals on anything it cannot parse.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from ...wire import ENCODING, ERRORS, LineBuffer, ProtocolViolation, decode, encode, one_line
from .events import (
    Answer,
    Error,
    Event,
    Found,
    Hello,
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
_CLIENT_SECRETS = (Service.AUTH, Service.CREDENTIALS)
_OPS = {op.value: op for op in Op}
_HEADS = {op: f"{op.value}-result|" for op in Op}
_SERVICES = {service.value: service for service in Service}
_KEYED = {"lookup": Op.LOOKUP, "check": Op.CHECK}
_new = tuple.__new__  # _new(Request, fields): Request(...) without its Python-level __new__
_UPDATE, _CHECK, _LOOKUP, _FETCH = Op.UPDATE, Op.CHECK, Op.LOOKUP, Op.FETCH
# smtpd sends four config lines (§3.2); a peer that sends more gets them ignored, so the
# handshake state stays bounded whatever arrives (docs/limits.md).
MAX_CONFIG_ITEMS = 32
MAX_CONFIG_VALUE = 2048  # LINE_MAX: smtpd's table names fit
_KNOWN_CONFIG = frozenset(("smtpd-version", "protocol", "tablename"))


def parse_request(line: str) -> Request | Malformed:
    """Parse one request line (without its newline)."""
    fields = line.split("|", 7)
    if len(fields) == 8:  # the hot shape, check or lookup: judged and built in one step
        head, version, _, table, name, service, request_id, key = fields
        op = _KEYED.get(name)
        if op is not None and request_id and head == "table" and version == PROTOCOL_VERSION:
            return _new(Request, (op, request_id, table, _SERVICES.get(service), key, service))
    if len(fields) < 6 or fields[0] != "table":
        # never quote the line: it may be the tail of a key carrying a password
        return Malformed(f"not a table request ({len(line)} bytes, {line.count('|')} '|')")
    op = _OPS.get(fields[4])
    if op is None:
        return Malformed(f"unknown operation {fields[4][:40]!r}")
    if op is _UPDATE:
        if len(fields) != 6:
            return Malformed("update request with extra fields", op=op)
        request_id = fields[5]
        raw_service = ""
    else:
        want = 7 if op is _FETCH else 8
        if len(fields) != want:
            return Malformed(f"{op} request needs {want} fields, got {len(fields)}", op=op,
                             id=fields[6] or None if len(fields) > 6 else None)
        raw_service, request_id = fields[5], fields[6]
    if not request_id:
        return Malformed("empty request id", op=op)
    if fields[1] != PROTOCOL_VERSION:
        return Malformed(f"unsupported protocol version {fields[1][:20]!r}", id=request_id, op=op)
    return Request(op, request_id, fields[3], _SERVICES.get(raw_service),
                   fields[7] if op is _LOOKUP or op is _CHECK else None, raw_service)


class TableSide:
    """The table's end: turns smtpd's bytes into events, replies into bytes."""

    def __init__(self) -> None:
        self._lines = LineBuffer()
        self._config: list[tuple[str, str]] = []
        self._tail = False  # the rest of a dropped key is still arriving (see _whole)
        self.ready = False
        self.table = ""

    def receive_data(self, data: bytes) -> None:
        self._lines._buf += data  # LineBuffer.feed(), inlined

    def discard(self) -> int:
        """Drop buffered input (after an internal error); how many bytes were dropped."""
        return self._lines.discard()

    def next_event(self) -> Event | None:
        lines = self._lines
        buf = lines._buf
        if not buf:
            return None
        if self._tail:  # the end of a dropped key: up to its newline, never a request
            end = buf.find(b"\n")
            del buf[:end + 1 if end >= 0 else len(buf)]
            self._tail = end < 0
            if not buf:
                return None
        if self.ready and not lines._skipping:  # LineBuffer.next_line() inlined: hot path
            end = buf.find(b"\n")
            if end >= 0:
                line = buf[:end].decode(ENCODING, ERRORS)
                del buf[:end + 1]  # (``truncated`` is read only after next_line() below)
                request = parse_request(line)
                return self._whole(request) if buf else request  # nothing queued: whole
        while True:  # a loop, not recursion: any number of config lines in one read
            raw = lines.next_line()
            if raw is None:
                return None
            line = decode(raw)
            if lines.truncated:
                if not self.ready:
                    return Malformed(f"handshake line longer than {len(line)} bytes")
                # The line was cut: drop its last field, which may be a cut id. An id that
                # survives is whole, so the error reply carries exactly what smtpd sent.
                result = parse_request(line.rpartition("|")[0])
                return Malformed(f"request longer than {len(line)} bytes",
                                 id=getattr(result, "id", None), op=getattr(result, "op", None))
            if self.ready:
                return self._whole(parse_request(line))
            event = self._handshake(line)
            if event is not None:
                return event

    def _whole(self, event: Request | Malformed) -> Request | Malformed:
        """Refuse a credentials key that smtpd < 7.8 split with a raw newline.

        AUTH decodes base64, so a client can put ``\n`` in a username or password, and
        smtpd 7.6/7.7 writes the key raw (table-protocols.md §3.3). smtpd sends one
        request and waits, so bytes already queued behind such a request are the rest of
        its key, not a request: answering them would be an unsolicited reply, fatal to
        smtpd. Answer the request error and drop the rest without a reply or a log of it.
        """
        buf = self._lines._buf
        if buf and isinstance(event, Request) and event.service in _CLIENT_SECRETS:
            dropped = len(buf)
            self._tail = not buf.endswith(b"\n")  # its last line may still be arriving
            del buf[:]
            return Malformed(f"{event.service} key followed by {dropped} more bytes: a newline "
                             "in the client's credentials (smtpd < 7.8); dropped",
                             id=event.id, op=event.op)
        return event

    def _handshake(self, line: str) -> Event | None:
        """One line before ``config|ready``: None when it was a config line (kept)."""
        if line == "config|ready":
            self.ready = True
            config = dict(self._config)
            self.table = config.get("tablename", "")
            return Hello(self.table, config.get("smtpd-version", ""), tuple(self._config))
        key, sep, value = line.partition("|")
        if key != "config" or not sep:
            return Malformed(f"expected config|… during the handshake, got {line[:20]!r}…")
        name, _, value = value.partition("|")
        if len(self._config) < MAX_CONFIG_ITEMS or name in _KNOWN_CONFIG:
            self._config.append((name[:64], value[:MAX_CONFIG_VALUE]))
            if len(self._config) > 2 * MAX_CONFIG_ITEMS:  # known keys sent over and over
                self._config = self._config[-MAX_CONFIG_ITEMS:]
        return None

    def send(self, event: Answer | Ready) -> bytes:
        """The bytes for smtpd: an Answer's reply line, or Ready's registration lines."""
        if type(event) is Answer:
            op, request_id, reply = event
            if type(reply) is Found and op is _LOOKUP:  # the hot path
                value = reply.value
                if value and "\n" not in value:
                    return f"lookup-result|{request_id}|found|{value}\n".encode(ENCODING, ERRORS)
            return reply_line(op, request_id, reply)
        if isinstance(event, Ready):
            return registration(event.services)
        raise TypeError(f"a table sends Answer or Ready, not {type(event).__name__}")


def registration(services: Iterable[Service]) -> bytes:
    """``register|<service>`` lines then ``register|ready``; ValueError for no service
    (smtpd exits on a table that registers none, §3.2)."""
    unique = dict.fromkeys(services)
    if not unique:
        raise ValueError("a table must register at least one service")
    return encode("".join(f"register|{s.value}\n" for s in unique) + "register|ready\n")


def reply_line(op: Op, request_id: str, reply: Reply) -> bytes:
    """Encode a reply; a reply that does not fit ``op`` becomes an error line."""
    head = f"{_HEADS[op]}{request_id}|"
    if isinstance(reply, Error):
        return encode(f"{head}error|{one_line(reply.reason)}\n")
    if op is _UPDATE:
        if isinstance(reply, Updated):
            return encode(head + "ok\n")
    elif isinstance(reply, NotFound):
        return encode(head + "not-found\n")
    elif isinstance(reply, Found):
        if op is _CHECK:
            return encode(head + "found\n")
        value = reply.value
        if value and "\n" not in value:
            return encode(f"{head}found|{value}\n")
    return encode(f"{head}error|reply {type(reply).__name__} does not fit {op}\n")


# --- smtpd's end: used by the by-hand tool, the conformance battery and the bridge ---


class SmtpdSide:
    """smtpd's end: ``send(Open(...))`` then ``send(Request(...))``; ``next_event()`` gives
    ``Registered`` once, then an ``Answer`` per request, in the order sent, as smtpd 7.6+
    reads them (one outstanding request, §3.5). What would make smtpd exit raises
    ProtocolViolation. A line that arrives while nothing is asked stays buffered: smtpd
    reads it as the reply to its next request (and exits, as its id cannot match).

    ``clock`` gives the requests' timestamps (seconds); without one they carry 0.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._lines = LineBuffer()
        self._clock = clock
        self._sent: deque[tuple[Op, str]] = deque()
        self._services: list[Service] = []
        self.state = "new"  # then "handshake" (Open sent), "ready" (Registered read)

    def receive_data(self, data: bytes) -> None:
        self._lines.feed(data)

    def send(self, event: Open | Request) -> bytes:
        if isinstance(event, Open):
            if self.state != "new":
                raise ValueError("the handshake was sent already")
            self.state = "handshake"
            return handshake(event.table, event.smtpd_version)
        if self.state != "ready":
            raise ValueError("smtpd sends no request before the table registered")
        timestamp = f"{self._clock():.6f}" if self._clock is not None else "0.000000"
        self._sent.append((event.op, event.id))
        return request(event.op, event.table, event.id, event.service or event.raw_service,
                       event.key, timestamp)

    def next_event(self) -> Registered | Answer | None:
        if self.state == "handshake":
            while (raw := self._lines.next_line()) is not None:
                service = parse_registration(decode(raw))
                if service is None:
                    if not self._services:
                        raise ProtocolViolation("no services registered")
                    self.state = "ready"
                    return Registered(tuple(self._services))
                self._services.append(service)
            return None
        if self.state != "ready" or not self._sent:
            return None
        raw = self._lines.next_line()
        if raw is None:
            return None
        op, request_id = self._sent.popleft()
        return Answer(op, request_id, parse_reply(op, request_id, decode(raw)))



def handshake(table: str, smtpd_version: str = "7.6.0-portable") -> bytes:
    return encode(
        f"config|smtpd-version|{smtpd_version}\nconfig|protocol|{PROTOCOL_VERSION}\n"
        f"config|tablename|{table}\nconfig|ready\n"
    )


def parse_registration(line: str) -> Service | None:
    """One handshake reply line: a service, or None for ``register|ready``.

    Raises ProtocolViolation exactly where smtpd's table_proc_open() fatals.
    """
    if not line.startswith("register|"):
        raise ProtocolViolation(f"invalid handshake reply {line[:80]!r}")
    name = line[9:]
    if name == "ready":
        return None
    service = Service.from_name(name)
    if service is None:
        raise ProtocolViolation(f"unknown service {name[:40]!r}")
    return service


def request(op: Op, table: str, request_id: str, service: Service | str | None = None,
            key: str | None = None, timestamp: str = "0.000000") -> bytes:
    """A request line; ``service`` may be a name no smtpd has (a str)."""
    head = f"table|{PROTOCOL_VERSION}|{timestamp}|{table}|{op.value}"
    if op is Op.UPDATE:
        return encode(f"{head}|{request_id}\n")
    assert service is not None
    name = service.value if isinstance(service, Service) else service
    tail = f"|{key}" if op in (Op.CHECK, Op.LOOKUP) else ""
    return encode(f"{head}|{name}|{request_id}{tail}\n")


def parse_reply(op: Op, request_id: str, line: str) -> Reply:
    """Judge a reply line exactly as table_proc.c of smtpd 7.6 does (§3.4)."""
    prefix = f"{op.value}-result|{request_id}|"
    if not line.startswith(prefix):
        start = "|".join(line.split("|", 2)[:2])[:40]  # never the value: it may be a secret
        raise ProtocolViolation(f"failed to parse reply {start!r}… (expected {prefix!r}…)")
    rest = line[len(prefix):]
    if op is Op.UPDATE:
        if rest == "ok":
            return Updated()
        if rest.startswith("error"):  # strncmp(r, "error", 5), as for the other ops
            return Error(rest[6:] if rest[5:6] == "|" else "")
        raise ProtocolViolation(f"failed parse reply {_peek(rest)}")
    if rest == "not-found":
        return NotFound()
    if rest.startswith("error"):
        return Error(rest[6:] if rest[5:6] == "|" else "")
    if op is Op.CHECK:
        if rest.startswith("found"):
            return Found()
        raise ProtocolViolation(f"failed to parse reply {_peek(rest)}")
    if not rest.startswith("found|"):
        raise ProtocolViolation(f"failed to parse reply {_peek(rest)}")
    if not rest[6:]:
        raise ProtocolViolation("empty response")
    return Found(rest[6:])


def _peek(rest: str) -> str:
    """The start of a reply's result for an error message, never its value (a found
    credentials value is a hash or a cleartext password): ``'found'…``."""
    return repr(rest.replace(":", "|").split("|", 1)[0][:20]) + "…"
