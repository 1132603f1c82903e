"""What smtpd sends a filter, line by line: text in, typed events out (sans-IO).
Reference: filter-protocol.md §0–§4 (versions 0.4 to 0.7).

Every line is parsed by its own version field (smtpd announces its version only from 7.6):

* before 0.5 an answer is ``filter-result|TOKEN|SESSION|…``, later ``…|SESSION|TOKEN|…``;
* before 0.6 tx-mail and tx-rcpt are ``msgid|address|result``, later ``msgid|result|address``;
* before 0.7 link-auth is ``username|result``, later ``result|username``.

A field that may contain ``|`` is read so that it keeps it: the last field takes the rest
of the line, and the fields that are not last (link-connect's rdns, the username and the
address of the old orders) are read from both ends. Nothing here raises on any input:
what cannot be parsed becomes ``Malformed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

from .events import (
    REPORT_EVENTS,
    SUBSYSTEMS,
    Config,
    DataLine,
    FilterReport,
    FilterResponse,
    LinkAuth,
    LinkConnect,
    LinkDisconnect,
    LinkGreeting,
    LinkIdentify,
    LinkTLS,
    Malformed,
    ProtocolClient,
    ProtocolServer,
    Query,
    Report,
    Timeout,
    TxBegin,
    TxCommit,
    TxData,
    TxEnvelope,
    TxMail,
    TxRcpt,
    TxReset,
    TxRollback,
    UnknownReport,
)

LATEST = (0, 7)
Version = tuple[int, int]

_VERSIONS: dict[str, Version | None] = {f"0.{minor}": (0, minor) for minor in range(1, 8)}


def parse_version(text: str) -> Version | None:
    """``"0.6"`` -> ``(0, 6)``; None for what is not ``MAJOR.MINOR`` with MAJOR 0.

    The integer versions of 2018–2019 (``1``, ``0``) predate every release: unsupported.
    A newer ``0.x`` is read with the newest layout known (new fields come last).
    """
    version = _VERSIONS.get(text)
    if version is not None or text in _VERSIONS:
        return version
    major, dot, minor = text.partition(".")
    if dot and major == "0" and minor.isdigit() and minor.isascii() and len(minor) < 4:
        version = (0, int(minor))
    if len(_VERSIONS) < 64:
        _VERSIONS[text] = version
    return version


def excerpt(line: str, limit: int = 80) -> str:
    """The beginning of a line, for error reasons (never the whole of a long line)."""
    return line[:limit] + ("…" if len(line) > limit else "")


# --- report events ---

def _link_connect(version: str, v: Version, ts: float, sub: str, sid: str,
                  rest: str) -> Report:
    rdns, fcrdns, src, dest = rest.rsplit("|", 3)  # rdns is not last: read from the end
    return LinkConnect(version, ts, sub, sid, rdns, fcrdns, src, dest)


def _link_auth(version: str, v: Version, ts: float, sub: str, sid: str, rest: str) -> Report:
    if v < (0, 7):
        username, bar, result = rest.rpartition("|")
    else:
        result, bar, username = rest.partition("|")
    if not bar:
        raise ValueError
    return LinkAuth(version, ts, sub, sid, result, username)


def _tx_mail_rcpt(cls: type[TxMail] | type[TxRcpt]) -> Callable[..., Report]:
    def parse(version: str, v: Version, ts: float, sub: str, sid: str, rest: str) -> Report:
        if v < (0, 6):
            msgid, bar, tail = rest.partition("|")
            address, bar2, result = tail.rpartition("|")
        else:
            msgid, bar, tail = rest.partition("|")
            result, bar2, address = tail.partition("|")
        if not (bar and bar2):
            raise ValueError
        return cls(version, ts, sub, sid, msgid, result, address)
    return parse


def _two(cls: Callable[..., Report]) -> Callable[..., Report]:
    def parse(version: str, v: Version, ts: float, sub: str, sid: str, rest: str) -> Report:
        first, bar, second = rest.partition("|")
        if not bar:
            raise ValueError
        return cls(version, ts, sub, sid, first, second)
    return parse


def _msgid(cls: Callable[..., Report]) -> Callable[..., Report]:
    def parse(version: str, v: Version, ts: float, sub: str, sid: str, rest: str) -> Report:
        return cls(version, ts, sub, sid, rest.partition("|")[0])
    return parse


def _last(cls: Callable[..., Report]) -> Callable[..., Report]:
    def parse(version: str, v: Version, ts: float, sub: str, sid: str, rest: str) -> Report:
        return cls(version, ts, sub, sid, rest)
    return parse


def _bare(cls: Callable[..., Report]) -> Callable[..., Report]:
    def parse(version: str, v: Version, ts: float, sub: str, sid: str, rest: str) -> Report:
        return cls(version, ts, sub, sid)
    return parse


def _tx_commit(version: str, v: Version, ts: float, sub: str, sid: str, rest: str) -> Report:
    msgid, bar, size = rest.partition("|")
    if not bar:
        raise ValueError
    return TxCommit(version, ts, sub, sid, msgid, int(size.partition("|")[0]))


def _filter_report(version: str, v: Version, ts: float, sub: str, sid: str,
                   rest: str) -> Report:
    kind, name, message = rest.split("|", 2)
    return FilterReport(version, ts, sub, sid, kind, name, message)


def _filter_response(version: str, v: Version, ts: float, sub: str, sid: str,
                     rest: str) -> Report:
    fields = rest.split("|", 2)
    if len(fields) < 2:
        raise ValueError
    return FilterResponse(version, ts, sub, sid, fields[0], fields[1],
                          fields[2] if len(fields) == 3 else None)


_PARSERS: dict[str, Callable[[str, Version, float, str, str, str], Report]] = {
    "link-connect": _link_connect,
    "link-disconnect": _bare(LinkDisconnect),
    "link-greeting": _last(LinkGreeting),
    "link-identify": _two(LinkIdentify),
    "link-tls": _last(LinkTLS),
    "link-auth": _link_auth,
    "tx-reset": _msgid(TxReset),
    "tx-begin": _msgid(TxBegin),
    "tx-mail": _tx_mail_rcpt(TxMail),
    "tx-rcpt": _tx_mail_rcpt(TxRcpt),
    "tx-envelope": _two(TxEnvelope),
    "tx-data": _two(TxData),
    "tx-commit": _tx_commit,
    "tx-rollback": _msgid(TxRollback),
    "protocol-client": _last(ProtocolClient),
    "protocol-server": _last(ProtocolServer),
    "filter-report": _filter_report,
    "filter-response": _filter_response,
    "timeout": _bare(Timeout),
}
assert set(_PARSERS) == set(REPORT_EVENTS)
_NO_PARAMS = frozenset(("link-disconnect", "timeout", "link-greeting"))
# one lookup for "known subsystem and known event": the hot path of every report
_KNOWN = {(subsystem, event): parser for subsystem in SUBSYSTEMS
          for event, parser in _PARSERS.items()}


def parse_report(line: str) -> Report | Malformed:
    """``report|VERSION|TIMESTAMP|SUBSYSTEM|EVENT|SESSION[|params]``."""
    fields = line.split("|", 6)
    if len(fields) == 7:
        _, version, stamp, subsystem, event, session, rest = fields
    elif len(fields) == 6:
        _, version, stamp, subsystem, event, session = fields
        rest = None
    else:
        return Malformed("report with fewer than 6 fields", excerpt(line))
    v = _VERSIONS.get(version)
    if v is None:
        v = parse_version(version)
        if v is None:
            return Malformed(f"unsupported protocol version {version[:16]!r}", excerpt(line))
    try:
        timestamp = float(stamp)
    except ValueError:
        timestamp = math.nan
    if timestamp - timestamp != 0.0:  # NaN or infinite
        return Malformed(f"bad timestamp {stamp[:32]!r}", excerpt(line))
    if not session:
        return Malformed("empty session id", excerpt(line))
    parser = _KNOWN.get((subsystem, event))
    if parser is None:
        return UnknownReport(version, timestamp, subsystem, session, event, rest)
    if rest is None:
        if event not in _NO_PARAMS:
            return Malformed(f"{event} without parameters", excerpt(line))
        rest = ""
    try:
        return parser(version, v, timestamp, subsystem, session, rest)
    except ValueError:
        return Malformed(f"{event} {version}: missing or invalid fields", excerpt(line))


def parse_query(line: str) -> Query | DataLine | Malformed:
    """``filter|VERSION|TIMESTAMP|smtp-in|PHASE|SESSION|TOKEN|PARAM``.

    A query always ends with ``|PARAM``, empty for data, commit… (§0, trailing pipe).
    """
    fields = line.split("|", 7)
    if len(fields) < 7 or not fields[5] or not fields[6]:
        return Malformed("filter query without session and token", excerpt(line))
    _, version, stamp, subsystem, phase, session, token = fields[:7]
    param = fields[7] if len(fields) == 8 else ""
    query: Query | DataLine
    v = _VERSIONS.get(version) or parse_version(version)
    try:
        timestamp = float(stamp)
    except ValueError:
        timestamp = math.nan
    if phase == "data-line":
        query = DataLine(version, timestamp, subsystem, session, token, param)
    else:
        query = Query(version, timestamp, subsystem, phase, session, token, param)
    if v is None:  # still answered (smtpd waits), in the newest order
        return Malformed(f"unsupported protocol version {version[:16]!r}", excerpt(line), query)
    if timestamp - timestamp != 0.0:
        return Malformed(f"bad timestamp {stamp[:32]!r}", excerpt(line), query)
    return query


def parse_line(line: str) -> Report | Query | DataLine | Malformed:
    """One line from smtpd after the handshake (without its newline)."""
    if line.startswith("report|"):
        return parse_report(line)
    if line.startswith("filter|"):
        return parse_query(line)
    return Malformed("neither a report nor a filter query", excerpt(line))


def parse_config(lines: Collection[tuple[str, str]]) -> Config:
    """The ``config|KEY|VALUE`` pairs received up to ``config|ready``; unknown keys kept."""
    values: dict[str, str] = {}
    subsystems = []
    for key, value in lines:
        if key == "subsystem":
            subsystems.append(value)
        else:
            values.setdefault(key, value)
    timeout = values.get("smtp-session-timeout", "")
    return Config(
        smtpd_version=values.get("smtpd-version", ""),
        protocol=values.get("protocol"),
        session_timeout=int(timeout) if timeout.isdigit() and len(timeout) < 10 else None,
        subsystems=frozenset(subsystems),
        admd=values.get("admd"),
        items=tuple(lines),
    )


# --- what smtpd takes back ---


def order(version: str, session: str, token: str) -> str:
    """``SESSION|TOKEN``, or ``TOKEN|SESSION`` before 0.5 (§1)."""
    v = _VERSIONS.get(version) or parse_version(version) or LATEST
    return f"{token}|{session}" if v < (0, 5) else f"{session}|{token}"


def max_line(version: str) -> int:
    """The longest line smtpd takes back whole, without the newline (§5.6): up to 7.3
    (protocol 0.6 and older) lka copies responses into ``char[LINE_MAX]``, 2048 bytes;
    later its read buffer of 65536 bytes is the limit."""
    v = _VERSIONS.get(version) or parse_version(version) or LATEST
    return 2047 if v < (0, 7) else 65535
