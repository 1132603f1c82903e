"""The binary imsg table protocol of smtpd <= 7.5 (Debian 12's 6.8), both sides, sans-IO.

Reference: table-protocols.md §1.2–§1.7, pitfalls §7.1–§7.2.
Header ``=IHHII`` (type, len incl. header, flags, peerid, pid), host byte order, no
padding; len in 16…16384. Requests carry ``=iQ`` (service, params count = 0), then
``key\\0`` for CHECK/LOOKUP. Replies are always type PROC_TABLE_OK: smtpd fatals on
PROC_TABLE_FAIL, on a wrong payload size, on a value without NUL.
"""

from __future__ import annotations

import struct

from .events import Event, Failed, Found, Hello, Ignored, Malformed, NotFound, Op, Reply, Request
from .events import Updated
from .lines import decode, encode
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

    def receive_data(self, data: bytes) -> None:
        self._framer.feed(data)

    def next_event(self) -> Event | None:
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

    def opened(self) -> bytes:
        return message(PROC_TABLE_OK, b"", self.pid)

    def reply(self, op: Op, request_id: str, reply: Reply) -> bytes:
        """Encode a reply; one that does not fit ``op`` or the frame becomes -1."""
        payload = RESULT.pack(-1)
        if op is Op.UPDATE:
            if isinstance(reply, Updated):
                payload = RESULT.pack(1)
        elif isinstance(reply, NotFound):
            payload = RESULT.pack(0)
        elif isinstance(reply, Found):
            if op is Op.CHECK:
                payload = RESULT.pack(1)
            elif reply.value:
                value = encode(reply.value)
                if len(value) <= MAX_VALUE and b"\0" not in value:
                    payload = RESULT.pack(1) + value + b"\0"
        return message(PROC_TABLE_OK, payload, self.pid)


# --- smtpd's end (table_proc.c @ 6.8) ---


class ProtocolViolation(Exception):
    """A reply that makes smtpd 6.8 fatal (and exit)."""


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
    elif not rest.endswith(b"\0") or b"\0" in rest[:-1]:
        raise ProtocolViolation("not NUL-terminated")
    if r not in (-1, 0, 1):
        raise ProtocolViolation(f"result {r} is not -1, 0 or 1")
    if r == -1:
        return Failed("-1")
    if op is Op.UPDATE:
        return Updated() if r == 1 else Failed("update returned 0")
    if r == 0:
        return NotFound()
    return Found(decode(rest[:-1]) if op in (Op.LOOKUP, Op.FETCH) else None)
