"""What of a child's line table-procexec may write to smtpd's log: found values may be
credentials (DESIGN.md invariant 3; requests are described by ``Request.describe()``,
which never shows an auth password)."""

from __future__ import annotations

SHOWN = 160  # characters of a child's line quoted in a log line


def shown(line: str) -> str:
    """A child's line as quoted in logs: bounded, with a found value hidden (it may be a
    credentials hash or a password)."""
    head, sep, _value = line.partition("|found|")
    kind = head.split("|", 1)[0]
    if sep and (kind.endswith("-result") or kind == "table-response"):
        line = f"{head}|found|<value hidden>"
    return repr(line[:SHOWN] + ("…" if len(line) > SHOWN else ""))
