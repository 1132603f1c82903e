"""The table protocols, sans-IO, both ends: the second tier of ``opensmtpd.table``.

One module per generation, each with a ``TableSide`` (a table's end) and an
``SmtpdSide`` (smtpd's end), shaped like h11: ``receive_data(bytes)``, ``next_event()``,
``send(event) -> bytes``. No I/O, no globals, no clock read (smtpd's end takes one to
stamp its requests).

- ``imsg``: the binary imsg protocol of smtpd <= 7.5 (6.8 on Debian 12).
- ``native``: the line protocol "0.1" of smtpd >= 7.6.
- ``procexec2020``: the 2020 ``table-procexec`` dialect of the seed.

A table learns which one it faces from the first bytes smtpd sends (``detect``).
Events are in ``events``, services and the value rules smtpd applies in ``services``.
smtpd's end raises ``opensmtpd.wire.ProtocolViolation`` where smtpd itself would exit.
"""

from . import imsg, native, procexec2020
from .events import (
    REPLY_TYPES,
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
from .services import (
    ALL_BUT_AUTH,
    InvalidValue,
    Service,
    smtpd_parse_error,
    validate_value,
)

PROTOCOLS = ("native", "imsg", "2020")
_MAGIC = {"native": b"config|", "2020": b"table|", "imsg": imsg.HEADER.pack(
    imsg.PROC_TABLE_OPEN, 0, 0, 0, 0)[:4]}


def detect(prefix: bytes) -> str | None:
    """The generation (one of PROTOCOLS) whose smtpd starts with ``prefix``; None while
    undecided. Raises ValueError when no generation starts like this.
    """
    undecided = False
    for name, magic in _MAGIC.items():
        if prefix.startswith(magic):
            return name
        if magic.startswith(prefix):
            undecided = True
    if undecided:
        return None
    raise ValueError(f"cannot tell the table protocol from the first bytes {prefix[:16]!r}")


__all__ = [
    "ALL_BUT_AUTH",
    "PROTOCOLS",
    "REPLY_TYPES",
    "Answer",
    "Error",
    "Event",
    "Found",
    "Hello",
    "Ignored",
    "InvalidValue",
    "Malformed",
    "NotFound",
    "Op",
    "Open",
    "Ready",
    "Registered",
    "Reply",
    "Request",
    "Service",
    "Updated",
    "detect",
    "imsg",
    "native",
    "procexec2020",
    "smtpd_parse_error",
    "validate_value",
]
