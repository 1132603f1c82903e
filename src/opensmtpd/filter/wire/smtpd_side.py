"""smtpd's end of a filter's pipe, sans-IO: for drivers and tests, never for a filter.

``send(event)`` writes what smtpd writes (the handshake, report events, queries, data
lines, each in the field order of its version); ``receive_data(bytes)`` and
``next_event()`` read what a filter writes, as lka reads it, and raise
``opensmtpd.wire.ProtocolViolation`` where smtpd exits (filter-protocol.md §2.2, §4, §5.1,
read in lka_filter.c of 6.8.0p2, 7.6.0p0 and 7.9.0p0): the message is smtpd's own.

What smtpd merely tolerates is not a violation: an answer for a session that has ended is
ignored, a registration repeated is taken twice (``Registration`` keeps the repeats), a
line longer than smtpd takes back (up to 7.3) is cut as smtpd cuts it, a NUL ends a line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ...smtpd_version import NO_WIZ_PHASE, SmtpdVersion, parse_smtpd_version
from ...wire import ENCODING, ERRORS, ProtocolViolation, decode
from .dataline import END, unstuff
from .decisions import JUNK, PROCEED, Decision
from .events import (
    PHASES,
    REPORT_EVENTS,
    SMTP_IN,
    SMTP_OUT,
    SUBSYSTEMS,
    Answer,
    Config,
    DataLine,
    DataLines,
    FilterReport,
    FilterResponse,
    LinkAuth,
    LinkConnect,
    LinkDisconnect,
    LinkGreeting,
    LinkIdentify,
    LinkTLS,
    ProtocolClient,
    ProtocolServer,
    Query,
    Registration,
    Report,
    Result,
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
from .parse import LATEST, excerpt, parse_version

IOBUF_MAX = 65536  # lka's read buffer (iobuf.c): a longer line is never read whole
LINE_MAX = 2048  # up to 7.3 lka copies each response into char[LINE_MAX] (§1)
_REPLIES = (b"filter-result|", b"filter-dataline|")
_NEWEST = SmtpdVersion(99, 0, 0)


def protocol_of(version: SmtpdVersion) -> str:
    """The filter protocol an smtpd speaks (§1): 0.4 (6.6), 0.6 (6.7 – 7.3), 0.7 later."""
    if version < (6, 7):
        return "0.4"
    return "0.6" if version < (7, 4) else "0.7"


def smtpd_config(smtpd_version: str = "7.6.0-portable", *,
                 subsystems: Iterable[str] = (SMTP_IN,), admd: str = "localhost") -> Config:
    """The handshake that smtpd version sends (§2.1): ``protocol`` from 7.6, subsystem
    lines from 6.7, ``admd`` from 6.8."""
    version = parse_smtpd_version(smtpd_version) or _NEWEST
    items = [("smtpd-version", smtpd_version)]
    if version >= (7, 6):
        items.append(("protocol", protocol_of(version)))
    items.append(("smtp-session-timeout", "300"))
    if version >= (6, 7):
        items.extend(("subsystem", subsystem) for subsystem in subsystems)
    if version >= (6, 8):
        items.append(("admd", admd))
    values = dict(items)
    return Config(smtpd_version, values.get("protocol"), 300,
                     frozenset(v for k, v in items if k == "subsystem"), values.get("admd"),
                     tuple(items))


# --- smtpd -> filter: the report parameters, in the field order of each version (§3) ---

def _auth(r: Any, old: bool, older: bool) -> str:
    return f"{r.username}|{r.result}" if old else f"{r.result}|{r.username}"


def _tx(r: Any, old: bool, older: bool) -> str:
    return f"{r.msgid}|{r.address}|{r.result}" if older else f"{r.msgid}|{r.result}|{r.address}"


def _response(r: Any, old: bool, older: bool) -> str:
    return f"{r.phase}|{r.response}" + ("" if r.param is None else f"|{r.param}")


_PARAMS: dict[type[Report], Callable[[Any, bool, bool], str | None]] = {
    LinkConnect: lambda r, *_: f"{r.rdns}|{r.fcrdns}|{r.src}|{r.dest}",
    LinkDisconnect: lambda r, *_: None,
    LinkGreeting: lambda r, *_: r.hostname,
    LinkIdentify: lambda r, *_: f"{r.method}|{r.identity}",
    LinkTLS: lambda r, *_: r.tls,
    LinkAuth: _auth,
    TxReset: lambda r, *_: r.msgid,
    TxBegin: lambda r, *_: r.msgid,
    TxMail: _tx,
    TxRcpt: _tx,
    TxEnvelope: lambda r, *_: f"{r.msgid}|{r.envelope_id}",
    TxData: lambda r, *_: f"{r.msgid}|{r.result}",
    TxCommit: lambda r, *_: f"{r.msgid}|{r.size}",
    TxRollback: lambda r, *_: r.msgid,
    ProtocolClient: lambda r, *_: r.command,
    ProtocolServer: lambda r, *_: r.response,
    FilterReport: lambda r, *_: f"{r.kind}|{r.filter_name}|{r.message}",
    FilterResponse: _response,
    Timeout: lambda r, *_: None,
    UnknownReport: lambda r, *_: r.params,
}


def _strtoull(text: str) -> tuple[int | None, int]:
    """C's ``strtoull(text, &end, 16)``: (value, or None on overflow; end index, 0 when
    nothing was converted). Spaces, a sign and ``0x`` are accepted, as in C."""
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    negative = i < n and text[i] == "-"
    if i < n and text[i] in "+-":
        i += 1
    if text[i:i + 2] in ("0x", "0X") and text[i + 2:i + 3] in _HEX:
        i += 2
    start = i
    while i < n and text[i] in _HEX:
        i += 1
    if i == start:
        return 0, 0
    value = int(text[start:i], 16)
    if value >= 1 << 64:
        return None, i
    return (-value) % (1 << 64) if negative else value, i


_HEX = frozenset("0123456789abcdefABCDEF")


class _Session:
    __slots__ = ("data", "pending", "phase", "tokens")

    def __init__(self) -> None:
        self.phase = "connect"  # fs->phase starts at 0, FILTER_CONNECT (xcalloc)
        self.pending: Query | None = None  # the query smtp waits on
        self.data: DataLine | None = None  # the last data line sent
        self.tokens: dict[str, int] = {}  # the filter's chain entry per phase


def _key(session: str) -> int | str:
    value, end = _strtoull(session)
    return value if value is not None and end == len(session) and end else session


class SmtpdSide:
    """smtpd's end: ``send(event) -> bytes``, ``receive_data(bytes)``, ``next_event()``.

    Which smtpd it plays is the ``Config`` it sends first (``smtpd_config(version)``);
    until then, the newest. It knows the sessions it named (smtp-in, until their
    link-disconnect) and the query each one waits on.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._sessions: dict[int | str, _Session] = {}
        self._reports: dict[str, list[str]] = {}
        self._phases: list[str] = []
        self.version = _NEWEST
        self.ready = False  # register|ready received

    # --- smtpd -> filter ---

    def send(self, event: Config | Report | Query | DataLine) -> bytes:
        if isinstance(event, Config):
            self.version = parse_smtpd_version(event.smtpd_version) or _NEWEST
            items = event.items or smtpd_config(event.smtpd_version).items
            lines = [f"config|{key}|{value}" for key, value in items]
            return ("\n".join([*lines, "config|ready"]) + "\n").encode(ENCODING, ERRORS)
        if isinstance(event, Report):
            return self._report(event)
        session = self._session(event.session)
        if isinstance(event, DataLine):
            session.phase, session.data = "data-line", event
            session.tokens["data-line"] = _strtoull(event.token)[0] or 0
            param = event.line
        else:
            session.phase, session.pending = event.phase, event
            session.tokens[event.phase] = _strtoull(event.token)[0] or 0
            param = event.param
        return (f"filter|{event.version}|{event.timestamp:.6f}|smtp-in|{event.phase}|"
                f"{event.session}|{event.token}|{param}\n").encode(ENCODING, ERRORS)

    def _report(self, report: Report) -> bytes:
        v = parse_version(report.version) or LATEST
        params = _PARAMS[type(report)](report, v < (0, 7), v < (0, 6))
        if report.subsystem == SMTP_IN:
            if type(report) is LinkDisconnect:
                self._sessions.pop(_key(report.session), None)
            else:
                self._session(report.session)
        tail = "" if params is None else f"|{params}"
        return (f"report|{report.version}|{report.timestamp:.6f}|{report.subsystem}|{report.name}|"
                f"{report.session}{tail}\n").encode(ENCODING, ERRORS)

    def _session(self, session: str) -> _Session:
        key = _key(session)
        known = self._sessions.get(key)
        if known is None:
            known = self._sessions[key] = _Session()
        return known

    # --- filter -> smtpd ---

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> Answer | None:
        """The next answer, None until a line completes; raises ProtocolViolation."""
        buf = self._buffer
        while True:
            end = buf.find(b"\n")
            if end < 0 and len(buf) < IOBUF_MAX:
                return None
            if end < 0 or end >= IOBUF_MAX:
                del buf[:]
                raise ProtocolViolation(f"a line longer than smtpd's {IOBUF_MAX}-byte read "
                                        "buffer: smtpd never reads it, nor anything after")
            raw = bytes(buf[:end]).partition(b"\0")[0]  # lka reads C strings
            del buf[:end + 1]
            if self.version < (7, 4) and raw.startswith(_REPLIES):
                raw = raw[:LINE_MAX - 1]  # strlcpy into char[LINE_MAX]
            answer = self._line(decode(raw))
            if answer is not None:
                return answer

    def _line(self, line: str) -> Answer | None:
        if line.startswith("register|"):
            return self._register(line)
        if not self.ready:
            raise ProtocolViolation(f"Non-register message before register|ready: "
                                    f"{excerpt(line)}")
        if line.startswith(("filter-result|", "filter-dataline|")):
            return self._response(line)
        if line.startswith("report|"):  # lka_report_proc: every form is fatal (§5.3)
            raise ProtocolViolation(f"Invalid report: {excerpt(line)}")
        raise ProtocolViolation(f"Invalid filter message type: {excerpt(line)}")

    def _register(self, line: str) -> Registration | None:
        if line == "register|ready":
            if self.ready:
                return None
            self.ready = True
            return Registration({k: tuple(v) for k, v in self._reports.items()},
                                   tuple(self._phases))
        hook = line[16:]
        if line.startswith("register|report|"):
            subsystem, bar, name = hook.partition("|")
            # 6.6 (0.4) compiled the smtp-out branch out: its direction is fatal there
            if not bar or subsystem not in SUBSYSTEMS or (
                    subsystem == SMTP_OUT and self.version < (6, 7)):
                raise ProtocolViolation(f"Invalid message direction: {excerpt(hook)}")
            if name != "*" and name not in REPORT_EVENTS:
                raise ProtocolViolation(f"Unrecognized report name: {excerpt(name)}")
            self._reports.setdefault(subsystem, []).append(name)
        elif line.startswith("register|filter|"):
            if hook[:8].lower() != "smtp-in|":  # strncasecmp
                raise ProtocolViolation(f"Invalid message direction: {excerpt(hook)}")
            name = hook[8:]
            if name not in PHASES or (name == "wiz" and self.version >= NO_WIZ_PHASE):
                raise ProtocolViolation(f"Unrecognized report name: {excerpt(name)}")
            self._phases.append(name)
        else:
            raise ProtocolViolation(f"Invalid register line received: {excerpt(line)}")
        return None

    def _ids(self, line: str) -> tuple[int | None, int | None, str]:
        """(first id, second id, rest) as lka_filter_process_response reads them."""
        rest = line.partition("|")[2]
        if self.version < (7, 4):  # each field must be a whole number, then a '|'
            first, bar, rest = rest.partition("|")
            if not bar:
                raise ProtocolViolation(f"Missing reqid: {excerpt(line)}")
            one, end = _strtoull(first)
            if not first or end != len(first):
                raise ProtocolViolation(f"Invalid reqid: {excerpt(line)}")
            second, bar, rest = rest.partition("|")
            if not bar:
                raise ProtocolViolation(f"Missing directive: {excerpt(line)}")
            two, end = _strtoull(second)
            if not second or end != len(second):
                raise ProtocolViolation(f"Invalid token: {excerpt(line)}")
            return one, two, rest
        one, end = _strtoull(rest)
        if not rest or rest[end:end + 1] != "|":
            raise ProtocolViolation(f"Invalid reqid: {excerpt(line)}")
        rest = rest[end + 1:]
        two, end = _strtoull(rest)
        if not rest or rest[end:end + 1] != "|":
            raise ProtocolViolation(f"Invalid token: {excerpt(line)}")
        return one, two, rest[end + 1:]

    def _response(self, line: str) -> Answer | None:
        first, second, response = self._ids(line)
        if first is None or second is None:
            raise ProtocolViolation(f"Invalid {'reqid' if first is None else 'token'}: "
                                    f"{excerpt(line)}")
        reqid, token = (second, first) if self.version < (6, 7) else (first, second)  # 0.4
        session = self._sessions.get(reqid)
        if session is None:
            return None  # "session can legitimately disappear on a resume"
        if line.startswith("filter-dataline|"):
            if session.phase != "data-line":
                raise ProtocolViolation("filter-dataline out of dataline phase")
            if token != session.tokens.get("data-line") or session.data is None:
                raise ProtocolViolation("misbehaving filter")
            if response == END:
                return DataLines(session.data, (), end=True)
            return DataLines(session.data, (unstuff(response),))
        if session.phase == "data-line":
            raise ProtocolViolation("filter-result in dataline phase")
        action, bar, parameter = response.partition("|")
        old = self.version < (7, 4)
        decision: Decision
        if response == "proceed" or (old and action == "proceed"):
            if bar:
                raise ProtocolViolation(f"Unexpected parameter after proceed: {excerpt(line)}")
            if token != session.tokens.get(session.phase):
                raise ProtocolViolation("misbehaving filter")
            decision = PROCEED
        elif response == "junk" or (old and action == "junk"):
            if bar:
                raise ProtocolViolation(f"Unexpected parameter after junk: {excerpt(line)}")
            if session.phase == "commit":
                raise ProtocolViolation("filter-response junk after DATA")
            decision = JUNK
        elif not bar:
            raise ProtocolViolation(f"Missing parameter: {excerpt(line)}")
        elif action in ("rewrite", "reject", "disconnect") or (
                action == "report" and self.version >= (7, 6)):
            decision = Decision(action, parameter)
        else:
            raise ProtocolViolation(f"Invalid directive: {excerpt(line)}")
        query, session.pending = session.pending, None
        if query is None:  # smtp's tree_xpop(&wait_filters, reqid) exits
            raise ProtocolViolation(f"filter-result for a session waiting on no query: "
                                    f"{excerpt(line)}")
        return Result(query, decision)
