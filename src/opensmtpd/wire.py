"""What every wire module shares, tables and filters, both ends (sans-IO): the text
encoding, bounded line framing, and the one exception for what smtpd would refuse.

The protocol modules themselves are ``opensmtpd.table.wire`` and ``opensmtpd.filter.wire``.
"""

from __future__ import annotations

ENCODING = "utf-8"
ERRORS = "surrogateescape"  # any byte smtpd sends survives the round trip

# smtpd keys are < 1024 bytes and values are parsed into LINE_MAX buffers; a line far
# beyond that is not from smtpd. Bounded so a runaway peer cannot grow our memory.
MAX_LINE = 65536


class ProtocolViolation(Exception):
    """Bytes smtpd would refuse: it ``fatalx``es on them, and its exit stops the mail.

    Raised by the smtpd end of every protocol (a table's or a filter's reply judged as
    smtpd judges it); a table or filter end never raises it on what smtpd sends (what it
    cannot parse is a ``Malformed`` event, answered where an answer is owed).
    """


def decode(raw: bytes) -> str:
    return raw.decode(ENCODING, ERRORS)


def encode(text: str) -> bytes:
    return text.encode(ENCODING, ERRORS)


def one_line(text: str, limit: int = 200) -> str:
    """Make free text (an error reason) safe as the last field of a line."""
    flat = " ".join(text.split())
    return flat[:limit] if flat else "error"


class LineBuffer:
    """Accumulates bytes and yields complete lines (without the newline).

    A line longer than MAX_LINE is not buffered whole: its first bytes are kept (so a
    request id can still be read) and ``truncated`` is set when it is returned.
    """

    __slots__ = ("_buf", "_skipping", "truncated")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False
        self.truncated = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | None:
        buf = self._buf
        if not buf:
            return None
        end = buf.find(b"\n", 0 if not self._skipping else 1024)
        if end < 0:
            if len(buf) > MAX_LINE:
                self._skipping = True
                del buf[1024:]
            return None
        line = bytes(buf[:end]) if not self._skipping else bytes(buf[:1024])
        del buf[: end + 1]
        self.truncated, self._skipping = self._skipping, False
        return line

    def discard(self) -> int:
        dropped = len(self._buf)
        del self._buf[:]
        self._skipping = False
        return dropped

    @property
    def pending(self) -> int:
        return len(self._buf)
