"""What of a request or of a child's line table-procexec may write to smtpd's log: auth
keys carry cleartext passwords, found values may be credentials (DESIGN.md invariant 3)."""

from __future__ import annotations

from ..table.events import Request
from ..table.services import Service

SHOWN = 160  # characters of a child's line quoted in a log line


def describe(request: Request) -> str:
    """A request as logged: an auth key's password is never shown."""
    what = f"{request.op} {request.service or request.raw_service}".rstrip()
    if request.key is None:
        return what
    if request.service is Service.AUTH:
        user = request.key.partition(":")[0]
        return f"{what} {user[:64]!r}:<password>"
    return f"{what} {request.key[:128]!r}"


def shown(line: str) -> str:
    """A child's line as quoted in logs: bounded, with a found value hidden (it may be a
    credentials hash or a password)."""
    head, sep, _value = line.partition("|found|")
    kind = head.split("|", 1)[0]
    if sep and (kind.endswith("-result") or kind == "table-response"):
        line = f"{head}|found|<value hidden>"
    return repr(line[:SHOWN] + ("…" if len(line) > SHOWN else ""))
