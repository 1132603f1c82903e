"""The binary imsg table protocol of smtpd <= 7.5 (Debian 12's 6.8), both sides, sans-IO.

Reference: table-protocols.md §1.2–§1.7, pitfalls §7.1–§7.2.
Header ``=IHHII`` (type, len incl. header, flags, peerid, pid), host byte order, no
padding; len in 16…16384. Requests carry ``=iQ`` (service, params count = 0), then
``key\\0`` for CHECK/LOOKUP. Replies are always type PROC_TABLE_OK: smtpd fatals on
PROC_TABLE_FAIL, on a wrong payload size, on a value without NUL.
"""

from __future__ import annotations

import struct
from collections import deque

from ...wire import ENCODING, ERRORS, ProtocolViolation, decode, encode
from .events import (
    Answer,
    Error,
    Event,
    Found,
    Hello,
    Ignored,
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

HEADER = struct.Struct("=IHHII")
HEADER_SIZE = HEADER.size  # 16
MAX_IMSGSIZE = 16384
MAX_PAYLOAD = MAX_IMSGSIZE - HEADER_SIZE  # 16368
SERVICE_PARAMS = struct.Struct("=iQ")  # i32 service, size_t count (LP64), packed
RESULT = struct.Struct("=i")
LINE_MAX = 2048
OPEN_PARAMS = struct.Struct(f"=I{LINE_MAX}s")  # struct table_open_params, 2052 bytes
API_VERSION = 2

PROC_TABLE_OK, PROC_TABLE_FAIL, PROC_TABLE_OPEN, PROC_TABLE_CLOSE = 0, 1, 2, 3
PROC_TABLE_UPDATE, PROC_TABLE_CHECK, PROC_TABLE_LOOKUP, PROC_TABLE_FETCH = 4, 5, 6, 7
_OPS = {PROC_TABLE_UPDATE: Op.UPDATE, PROC_TABLE_CHECK: Op.CHECK,
        PROC_TABLE_LOOKUP: Op.LOOKUP, PROC_TABLE_FETCH: Op.FETCH}
_TYPES = {op: t for t, op in _OPS.items()}
# The largest value a LOOKUP/FETCH reply can carry: payload minus r and the NUL.
MAX_VALUE = MAX_PAYLOAD - RESULT.size - 1

# Hot path (TableSide): a CHECK/LOOKUP with no params, its key right after the header.
_QUERY_HEAD = struct.Struct("=IHHIIiQ")  # HEADER then SERVICE_PARAMS, in one unpack
_KEY_AT = HEADER_SIZE + SERVICE_PARAMS.size  # 28
_KEYED = {PROC_TABLE_CHECK: Op.CHECK, PROC_TABLE_LOOKUP: Op.LOOKUP}
_BY_CODE = {service.code: service for service in Service}
_RAW_SERVICE = {code: f"0x{code:x}" for code in _BY_CODE}
_UPDATE, _CHECK, _LOOKUP = Op.UPDATE, Op.CHECK, Op.LOOKUP
_new = tuple.__new__  # _new(Request, fields): Request(...) without its Python-level __new__
REPLY_CACHE_SIZE = 1024  # encoded lookup answers kept per TableSide, keyed by value,
REPLY_CACHE_MAX_VALUE = 1024  # for values up to this many characters


def message(msg_type: int, payload: bytes, pid: int) -> bytes:
    return HEADER.pack(msg_type, HEADER_SIZE + len(payload), 0, 0, pid) + payload


class Framer:
    """Slices whole imsg messages out of a byte stream."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> tuple[int, bytes] | None:
        """(type, payload), or None for more data. ValueError on an impossible length."""
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        msg_type, length, _flags, _peer, _pid = HEADER.unpack_from(buf)
        if length < HEADER_SIZE or length > MAX_IMSGSIZE:
            del buf[:]
            raise ValueError(f"imsg length {length} outside {HEADER_SIZE}..{MAX_IMSGSIZE}")
        if len(buf) < length:
            return None
        payload = bytes(buf[HEADER_SIZE:length])
        del buf[:length]
        return msg_type, payload


class TableSide:
    """The table's end of the socket (fd 0)."""

    def __init__(self, pid: int = 0) -> None:
        self._framer = Framer()
        self._seq = 0
        self.pid = pid
        self.table = ""
        self._cache_pid = pid  # the pid the encoded replies below were made with
        self._results: dict[int, bytes] = {}  # r -> a reply without a value
        self._values: dict[str, bytes] = {}  # value -> its LOOKUP/FETCH reply

    def receive_data(self, data: bytes) -> None:
        self._framer._buf += data

    def discard(self) -> int:
        dropped = len(self._framer._buf)
        del self._framer._buf[:]
        return dropped

    def next_event(self) -> Event | None:
        buf = self._framer._buf
        if not buf:
            return None
        if len(buf) >= _KEY_AT + 2:  # fast path: what smtpd sends for every check and lookup
            msg_type, length, _flags, _peer, _pid, code, count = _QUERY_HEAD.unpack_from(buf)
            op = _KEYED.get(msg_type)
            if (op is not None and count == 0 and _KEY_AT + 2 <= length <= len(buf)
                    and length <= MAX_IMSGSIZE and buf[length - 1] == 0):
                key = buf[_KEY_AT:length - 1]
                if b"\0" not in key:
                    del buf[:length]
                    self._seq = seq = self._seq + 1
                    return _new(Request, (op, str(seq), self.table, _BY_CODE.get(code),
                                          key.decode(ENCODING, ERRORS),
                                          _RAW_SERVICE.get(code) or f"0x{code:x}"))
        try:
            msg = self._framer.next_message()
        except ValueError as exc:
            return Malformed(str(exc))
        if msg is None:
            return None
        msg_type, payload = msg
        self._seq += 1
        if msg_type == PROC_TABLE_OPEN:
            return self._open(payload)
        op = _OPS.get(msg_type)
        if op is None:
            if msg_type == PROC_TABLE_CLOSE:
                return Ignored("close")
            return Malformed(f"unknown imsg type {msg_type}")
        request_id = str(self._seq)
        if op is Op.UPDATE:
            if payload:
                return Malformed("update with a payload", id=request_id, op=op)
            return Request(op, request_id, self.table)
        return self._query(op, request_id, payload)

    def _open(self, payload: bytes) -> Event:
        if len(payload) != OPEN_PARAMS.size:
            return Malformed(f"open payload is {len(payload)} bytes, expected {OPEN_PARAMS.size}")
        version, name = OPEN_PARAMS.unpack(payload)
        if version != API_VERSION:
            return Malformed(f"table API version {version}, expected {API_VERSION}")
        self.table = decode(name.split(b"\0", 1)[0])
        return Hello(self.table)

    def _query(self, op: Op, request_id: str, payload: bytes) -> Event:
        if len(payload) < SERVICE_PARAMS.size:
            return Malformed(f"{op} payload too short ({len(payload)} bytes)", request_id, op)
        code, count = SERVICE_PARAMS.unpack_from(payload)
        rest = payload[SERVICE_PARAMS.size:]
        for _ in range(min(count, 64)):  # smtpd sends none; skip key\0value\0 pairs
            parts = rest.split(b"\0", 2)
            if len(parts) < 3:
                return Malformed("truncated params", request_id, op)
            rest = parts[2]
        service = Service.from_code(code)
        raw_service = f"0x{code:x}"
        if op is Op.FETCH:
            return Request(op, request_id, self.table, service, None, raw_service)
        if not rest.endswith(b"\0") or len(rest) < 2 or b"\0" in rest[:-1]:
            return Malformed("key is empty or not NUL-terminated", request_id, op)
        return Request(op, request_id, self.table, service, decode(rest[:-1]), raw_service)

    def send(self, event: Answer | Ready) -> bytes:
        """The bytes for smtpd: an Answer's reply, or Ready's OPEN acknowledgement. A
        reply that does not fit ``op`` or the frame becomes -1 (imsg has no error text)."""
        if type(event) is not Answer:
            if isinstance(event, Ready):
                return message(PROC_TABLE_OK, b"", self.pid)
            raise TypeError(f"a table sends Answer or Ready, not {type(event).__name__}")
        op, _, reply = event
        if type(reply) is Found and op is _LOOKUP and self._cache_pid == self.pid:
            encoded = self._values.get(reply.value)  # type: ignore[arg-type]
            if encoded is not None:  # sent before: the same bytes again
                return encoded
        if self._cache_pid != self.pid:
            self._results.clear()
            self._values.clear()
            self._cache_pid = self.pid
        result = -1
        if op is _UPDATE:
            if isinstance(reply, Updated):
                result = 1
        elif isinstance(reply, NotFound):
            result = 0
        elif isinstance(reply, Found):
            if op is _CHECK:
                result = 1
            elif reply.value:
                return self._value_reply(reply.value)
        encoded = self._results.get(result)
        if encoded is None:
            encoded = self._results[result] = message(PROC_TABLE_OK, RESULT.pack(result),
                                                      self.pid)
        return encoded

    def _value_reply(self, text: str) -> bytes:
        """The reply carrying ``text`` (-1 if it cannot), from the cache when it was sent before."""
        encoded = self._values.get(text)
        if encoded is None:
            value = encode(text)
            if len(value) <= MAX_VALUE and b"\0" not in value:
                encoded = message(PROC_TABLE_OK, RESULT.pack(1) + value + b"\0", self.pid)
            else:
                return message(PROC_TABLE_OK, RESULT.pack(-1), self.pid)
            if len(text) <= REPLY_CACHE_MAX_VALUE:
                if len(self._values) >= REPLY_CACHE_SIZE:
                    self._values.clear()
                self._values[text] = encoded
        return encoded


# --- smtpd's end (table_proc.c @ 6.8) ---


class SmtpdSide:
    """smtpd's end: ``send(Open(...))`` then ``send(Request(...))``; ``next_event()`` gives
    ``Registered(())`` for the OPEN acknowledgement, then an ``Answer`` per request in the
    order sent (imsg has no ids: the Answer carries the id of the Request it answers).
    What would make smtpd exit raises ProtocolViolation (§1.6). A message that arrives
    while nothing is asked stays buffered: smtpd reads it as its next reply.

    A Request whose ``service`` is None goes out with the number in its ``raw_service``
    (``0x4000``: a service no smtpd has), as the table side reads it back.
    """

    def __init__(self, pid: int = 0) -> None:
        self._framer = Framer()
        self._sent: deque[tuple[Op, str]] = deque()
        self.pid = pid
        self.state = "new"  # then "handshake" (OPEN sent), "ready" (acknowledged)

    def receive_data(self, data: bytes) -> None:
        self._framer.feed(data)

    def send(self, event: Open | Request) -> bytes:
        if isinstance(event, Open):
            if self.state != "new":
                raise ValueError("the handshake was sent already")
            self.state = "handshake"
            return open_request(event.table, self.pid)
        if self.state != "ready":
            raise ValueError("smtpd sends no request before the OPEN acknowledgement")
        self._sent.append((event.op, event.id))
        return request(event.op, event.service, event.key, self.pid, _code(event))

    def next_event(self) -> Registered | Answer | None:
        if self.state == "new" or (self.state == "ready" and not self._sent):
            return None
        try:
            msg = self._framer.next_message()
        except ValueError as exc:  # imsg_get fails on it: fatal
            raise ProtocolViolation(str(exc)) from None
        if msg is None:
            return None
        if self.state == "handshake":
            parse_reply(None, *msg)
            self.state = "ready"
            return Registered(())
        op, request_id = self._sent.popleft()
        reply = parse_reply(op, *msg)
        assert reply is not None
        return Answer(op, request_id, reply)


def _code(event: Request) -> int | None:
    """The service number of a request whose service this library does not know."""
    if event.service is not None or not event.raw_service.startswith("0x"):
        return None
    try:
        return int(event.raw_service, 16)
    except ValueError:
        return None



def open_request(table: str, pid: int = 0, version: int = API_VERSION) -> bytes:
    return message(PROC_TABLE_OPEN, OPEN_PARAMS.pack(version, encode(table)[: LINE_MAX - 1]), pid)


def request(op: Op, service: Service | None = None, key: str | None = None, pid: int = 0,
            service_code: int | None = None) -> bytes:
    if op is Op.UPDATE:
        return message(PROC_TABLE_UPDATE, b"", pid)
    code = service_code if service_code is not None else (service.code if service else 0)
    payload = SERVICE_PARAMS.pack(code, 0)
    if op is not Op.FETCH:
        payload += encode(key or "") + b"\0"
    return message(_TYPES[op], payload, pid)


def parse_reply(op: Op | None, msg_type: int, payload: bytes) -> Reply | None:
    """Judge a reply as table_proc.c does; ``op`` None is the OPEN acknowledgement."""
    if msg_type != PROC_TABLE_OK:
        raise ProtocolViolation(f"bad response type {msg_type}")
    if op is None:
        if payload:
            raise ProtocolViolation("bogus data after OPEN acknowledgement")
        return None
    if len(payload) < RESULT.size:
        raise ProtocolViolation("bad msg len")
    (r,) = RESULT.unpack_from(payload)
    rest = payload[RESULT.size:]
    if op in (Op.UPDATE, Op.CHECK) or r != 1:
        if rest:
            raise ProtocolViolation("bogus data")
    elif not rest:
        raise ProtocolViolation("empty response")
    elif not rest.endswith(b"\0"):  # smtpd checks the last byte only, then strdup()s
        raise ProtocolViolation("not NUL-terminated")
    if r not in (-1, 0, 1):
        raise ProtocolViolation(f"result {r} is not -1, 0 or 1")
    if r == -1:
        return Error("-1")
    if op is Op.UPDATE:
        return Updated() if r == 1 else Error("update returned 0")
    if r == 0:
        return NotFound()
    return Found(decode(rest.split(b"\0", 1)[0]) if op in (Op.LOOKUP, Op.FETCH) else None)
