"""An independent, strict judge of what smtpd accepts from tables and filters.

Written from /work/shared/reference (table-protocols.md §1.6, §2, §3.4; filter-protocol.md
§2.2, §4, §5), not from opensmtpd's encoders: nothing here imports the library. Each judge
sees both directions of one conversation:

* ``sent(chunk, must=...)``: what "smtpd" wrote. The judge frames the stream exactly as
  the peer must (lines at ``\\n``; imsg by header length) and notes every request whose id
  it can read. ``must`` marks a chunk that is one whole request smtpd itself could send:
  it must be answered exactly once.
* ``received(data)``: what the process wrote back. Every reply must be well-formed for
  the request it answers, carry an id that was sent (byte for byte), and answer it once.

Problems are counted in ``Tally`` (never raised): a fuzz run reports them all at the end.
"""

from __future__ import annotations

import re
import struct
from collections import Counter, deque
from dataclasses import dataclass, field

OPS = ("update", "check", "lookup", "fetch")
SERVICES = ("alias", "domain", "credentials", "netaddr", "userinfo", "source", "mailaddr",
            "addrname", "mailaddrmap", "relayhost", "string", "regex", "auth")
SECRETS = ("auth", "credentials")


@dataclass
class Tally:
    """What went wrong in one conversation (every count should stay 0)."""

    inputs: int = 0
    answered: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # answers by kind: found, -1…
    malformed: list[str] = field(default_factory=list)
    unsolicited: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)

    def bad(self, kind: list[str], what: str) -> None:
        if len(kind) < 20:  # enough to debug; the count below keeps the rest
            kind.append(what[:300])
        else:
            kind.append("…")

    @property
    def problems(self) -> int:
        return (len(self.malformed) + len(self.unsolicited) + len(self.doubled)
                + len(self.unanswered))

    def summary(self) -> str:
        kinds = " ".join(f"{k}={v}" for k, v in sorted(self.kinds.items()))
        return (f"{self.inputs} inputs, {self.answered} answers ({kinds}), "
                f"{len(self.malformed)} malformed, "
                f"{len(self.unsolicited)} unsolicited, {len(self.doubled)} doubly answered, "
                f"{len(self.unanswered)} unanswered")

    def details(self) -> str:
        parts = []
        for name in ("malformed", "unsolicited", "doubled", "unanswered"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name}: {items[:5]!r}")
        return "; ".join(parts)


class _Lines:
    """``\\n`` framing of one direction."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return lines

    @property
    def at_boundary(self) -> bool:
        return not self.buf


# --- the line protocols of tables: native 0.1 (§3) and the 2020 dialect (§2) ---


def native_request(line: bytes) -> tuple[str | None, bytes | None, bool]:
    """(op, id, well_formed) of one request line as smtpd >= 7.6 writes them (§3.3).

    The id is returned when it is a whole field at its place; ``well_formed`` when the
    line is a request smtpd itself could send (any timestamp and table name).
    """
    fields = line.split(b"|", 7)
    if len(fields) < 6 or fields[0] != b"table":
        return None, None, False
    op = fields[4].decode("latin-1")
    if op not in OPS:
        return None, None, False
    if op == "update":
        ident = fields[5]  # a whole field, even when more follow
        return op, ident or None, bool(ident) and fields[1] == b"0.1" and len(fields) == 6
    if len(fields) < 7:
        return op, None, False
    ident = fields[6] or None
    want = 7 if op == "fetch" else 8
    good = (fields[1] == b"0.1" and len(fields) == want and ident is not None
            and fields[5].decode("latin-1") in SERVICES and b"|" not in fields[6])
    return op, ident, good


def procexec2020_request(line: bytes) -> tuple[str | None, bytes | None, bool]:
    """(op, id, well_formed) of a 2020 request: ``table|0.1|ts|op|id|svc|key`` or, named,
    ``table|0.1|ts|table|op|id|svc|key`` (table-protocols.md §2 and its correction)."""
    fields = line.split(b"|")
    if len(fields) < 5 or fields[0] != b"table":
        return None, None, False
    names = [f.decode("latin-1") for f in fields[3:5]]
    if len(fields) > 5 and names[1] in OPS:  # the unnamed form's field 4 is a hex id,
        rest = fields[4:]                    # never an op: a table may be named "update"
    elif names[0] in OPS:
        rest = fields[3:]
    else:
        return None, None, False
    op = rest[0].decode("latin-1")
    ident = rest[1] or None
    if op == "update":
        return op, ident, ident is not None and fields[1] == b"0.1" and len(rest) == 2
    need = 3 if op == "fetch" else 4
    good = (ident is not None and fields[1] == b"0.1" and len(rest) >= need
            and rest[2].decode("latin-1") in SERVICES and (op != "fetch" or len(rest) == 3))
    return op, ident, good


_ERROR_MESSAGE = re.compile(rb"error\|[^\r\0]+\Z")


def native_reply_ok(op: str, rest: bytes) -> bool:
    """The result part of ``<op>-result|<id>|<rest>``, as table_proc.c takes it (§3.4);
    strict where smtpd is lenient: an error carries a message (the man page requires it),
    no CR or NUL anywhere."""
    if b"\r" in rest or b"\0" in rest:
        return False
    if _ERROR_MESSAGE.match(rest):
        return True
    if op == "update":
        return rest == b"ok"
    if rest == b"not-found":
        return True
    if op == "check":
        return rest == b"found"
    return rest.startswith(b"found|") and len(rest) > 6


def procexec2020_reply_ok(op: str, rest: bytes) -> bool:
    if b"\r" in rest or b"\0" in rest:
        return False
    if rest == b"failure":
        return True
    if op == "update":
        return rest == b"updated"
    if rest == b"not-found":
        return True
    if op == "check":
        return rest == b"found"
    return rest.startswith(b"found|") and len(rest) > 6


class LineTableJudge:
    """A table on the native protocol (with its handshake) or the 2020 dialect."""

    def __init__(self, dialect: str) -> None:
        assert dialect in ("native", "2020")
        self.dialect = dialect
        self.tally = Tally()
        self._out = _Lines()
        self._in = _Lines()
        self.registered = dialect == "2020"  # the 2020 dialect has no handshake
        self.services: set[str] = set()
        self._ids: dict[bytes, tuple[frozenset[str], int]] = {}  # id -> (ops, times sent)
        self._answers: Counter[bytes] = Counter()
        self._musts: Counter[bytes] = Counter()  # times each id was sent as a must
        self.must: deque[bytes] = deque()  # ids that must be answered, oldest first
        self.barrier: tuple[bytes, int] | None = None  # (id, answers before) to wait on

    # smtpd -> table

    def sent(self, chunk: bytes, *, must: bool = False) -> bytes | None:
        """Note a chunk; with ``must``, returns the id it must be answered with when the
        chunk is one whole well-formed request at a line boundary (else None)."""
        self.tally.inputs += 1
        whole = must and self._in.at_boundary and chunk.endswith(b"\n") \
            and chunk.count(b"\n") == 1
        required = None
        self.barrier = None
        parse = native_request if self.dialect == "native" else procexec2020_request
        for line in self._in.feed(chunk):
            op, ident, good = parse(line)
            if op is None or ident is None:
                continue
            previous = self._ids.get(ident)
            ops, times = previous or (frozenset(), 0)
            self._ids[ident] = (ops | {op}, times + 1)
            if whole and good and self.registered and previous is None:
                required = ident  # a fresh id: its answer cannot be mistaken for another's
            elif good and self.dialect == "native" and line.split(b"|", 6)[5] in (
                    b"auth", b"credentials"):
                # The table drops what follows a secret request in its buffer (a newline
                # in credentials, smtpd < 7.8): let it answer before writing more.
                self.barrier = (ident, self._answers[ident])
        if required is not None:
            self.must.append(required)
            self._musts[required] += 1
        return required

    # table -> smtpd

    def received(self, data: bytes) -> None:
        for line in self._out.feed(data):
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not self.registered:
            if line == b"register|ready":
                self.registered = True
                if not self.services:
                    self.tally.bad(self.tally.malformed, "register|ready with no service")
                return
            name = line[9:].decode("latin-1") if line.startswith(b"register|") else None
            if name is None or name not in SERVICES:
                self.tally.bad(self.tally.malformed, f"handshake: {line!r}")
            else:
                self.services.add(name)
            return
        head, bar, rest = line.partition(b"|")
        ident, bar2, result = rest.partition(b"|")
        if self.dialect == "native":
            op = head[:-7].decode("latin-1") if head.endswith(b"-result") else ""
            ok_form = native_reply_ok
        else:
            op = "?" if head == b"table-result" else ""
            ok_form = procexec2020_reply_ok
        if not (bar and bar2 and op):
            self.tally.bad(self.tally.malformed, f"not a reply: {line!r}")
            return
        sent = self._ids.get(ident)
        if sent is None:
            self.tally.bad(self.tally.unsolicited, f"id never sent: {line[:200]!r}")
            return
        if op == "?":  # 2020: the reply does not name the op; judged against each sent
            op = next((o for o in sorted(sent[0]) if ok_form(o, result)), min(sent[0]))
        elif op not in sent[0]:
            self.tally.bad(self.tally.malformed, f"{op}-result to a {'/'.join(sent[0])}: "
                                                 f"{line!r}")
            return
        self._answers[ident] += 1
        self.tally.answered += 1
        if self._answers[ident] > sent[1]:
            self.tally.bad(self.tally.doubled, f"answered twice: {line[:200]!r}")
        self.tally.kinds[result.partition(b"|")[0].decode("latin-1")[:12]] += 1
        if not ok_form(op, result):
            self.tally.bad(self.tally.malformed, f"bad {op} reply: {line[:200]!r}")

    def passed(self, barrier: tuple[bytes, int]) -> bool:
        return self._answers[barrier[0]] > barrier[1]

    def answered(self, ident: bytes) -> bool:
        """Every must-send of ``ident`` so far has its answer."""
        return self._answers[ident] >= self._musts[ident]

    def finish(self) -> Tally:
        """After EOF: whatever must have been answered and was not."""
        for ident in dict.fromkeys(self.must):
            if self._answers[ident] < self._musts[ident]:
                self.tally.bad(self.tally.unanswered, f"id {ident[:80]!r}")
        if self._out.buf:
            self.tally.bad(self.tally.malformed, f"unterminated reply {self._out.buf[:80]!r}")
        return self.tally


# --- imsg (§1.2–§1.6): one reply per UPDATE/CHECK/LOOKUP/FETCH and per valid OPEN, in
# order, of type PROC_TABLE_OK, with exactly the payload table_proc.c reads ---

HEADER = struct.Struct("=IHHII")
OPEN, CLOSE, UPDATE, CHECK, LOOKUP, FETCH = 2, 3, 4, 5, 6, 7
OPEN_SIZE = 4 + 2048


class ImsgJudge:
    def __init__(self) -> None:
        self.tally = Tally()
        self._in = b""
        self._out = b""
        self.expected: deque[int] = deque()  # request types awaiting their reply
        self.must_total = 0

    def sent(self, chunk: bytes) -> int:
        """Note a chunk; returns how many replies it newly makes due."""
        self.tally.inputs += 1
        self._in += chunk
        due = 0
        while len(self._in) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._in)[:2]
            if not HEADER.size <= length <= 16384:
                raise AssertionError(f"the fuzzer sent an unframeable length {length}")
            if len(self._in) < length:
                break
            payload, self._in = self._in[HEADER.size:length], self._in[length:]
            if kind in (UPDATE, CHECK, LOOKUP, FETCH) or (
                    kind == OPEN and len(payload) == OPEN_SIZE
                    and struct.unpack_from("=I", payload)[0] == 2):
                self.expected.append(kind)
                self.must_total += 1
                due += 1
        return due

    def received(self, data: bytes) -> None:
        self._out += data
        while len(self._out) >= HEADER.size:
            kind, length, flags, peer, _pid = HEADER.unpack_from(self._out)
            if not HEADER.size <= length <= 16384:
                self.tally.bad(self.tally.malformed, f"reply length {length}")
                self._out = b""
                return
            if len(self._out) < length:
                return
            payload, self._out = self._out[HEADER.size:length], self._out[length:]
            self._reply(kind, flags, peer, payload)

    def _reply(self, kind: int, flags: int, peer: int, payload: bytes) -> None:
        if not self.expected:
            self.tally.bad(self.tally.unsolicited, f"reply type {kind} to nothing")
            return
        request = self.expected.popleft()
        self.tally.answered += 1
        what = f"reply to type {request}: type {kind} flags {flags} payload {payload[:40]!r}"
        if kind != 0 or flags != 0 or peer != 0:
            self.tally.bad(self.tally.malformed, what)  # PROC_TABLE_FAIL etc.: fatal
        elif request == OPEN:
            if payload:
                self.tally.bad(self.tally.malformed, what)  # "bogus data"
        elif len(payload) < 4:
            self.tally.bad(self.tally.malformed, what)  # "bad msg len"
        else:
            (r,) = struct.unpack_from("=i", payload)
            rest = payload[4:]
            self.tally.kinds[str(r)] += 1
            if r not in (-1, 0, 1):
                self.tally.bad(self.tally.malformed, what)
            elif request in (UPDATE, CHECK) or r != 1:
                if rest:
                    self.tally.bad(self.tally.malformed, what)  # "bogus data"
            elif len(rest) < 2 or not rest.endswith(b"\0") or b"\0" in rest[:-1]:
                self.tally.bad(self.tally.malformed, what)  # empty / not NUL-terminated

    def finish(self) -> Tally:
        for kind in self.expected:
            self.tally.bad(self.tally.unanswered, f"request type {kind}")
        if self._out:
            self.tally.bad(self.tally.malformed, f"partial reply {self._out[:40]!r}")
        return self.tally


# --- filters (filter-protocol.md §2.2, §4, §5) ---

REPORT_EVENTS = ("link-connect", "link-disconnect", "link-greeting", "link-identify",
                 "link-tls", "link-auth", "tx-reset", "tx-begin", "tx-mail", "tx-rcpt",
                 "tx-envelope", "tx-data", "tx-commit", "tx-rollback", "protocol-client",
                 "protocol-server", "filter-report", "filter-response", "timeout")
PHASES = ("connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data",
          "data-line", "rset", "quit", "noop", "help", "wiz", "commit")
VERSIONS = {b"0.4": (0, 4), b"0.5": (0, 5), b"0.6": (0, 6), b"0.7": (0, 7)}
_STAMP = re.compile(rb"[0-9]+\.[0-9]{6}\Z")
_SMTP_REPLY = re.compile(rb"[45][0-9][0-9] [^\r\n\0]+\Z")  # valid_smtp_response, 4xx/5xx


def _too_long(line: bytes, fields: list[bytes], limit: int) -> bool:
    """Longer than smtpd takes back (§5.6). smtpd's ids are 16 hex digits: when it was
    sent longer ones (echoed as received), only the part the filter adds must fit."""
    return len(line) > max(limit, limit + len(fields[1]) + len(fields[2]) - 32)


@dataclass
class _Query:
    phase: str
    version: tuple[int, int]
    must: bool


class FilterJudge:
    def __init__(self, *, smtp_out: bool, report_decision: bool) -> None:
        self.tally = Tally()
        self.smtp_out = smtp_out
        self.report_decision = report_decision  # smtpd >= 7.6 announced config|protocol
        self.registered = False
        self.registrations: set[bytes] = set()
        self._in = _Lines()
        self._out = _Lines()
        self._queries: dict[tuple[bytes, bytes], deque[_Query]] = {}  # by (session, token)
        self._data: Counter[tuple[bytes, bytes]] = Counter()  # data lines sent
        self._ends: Counter[tuple[bytes, bytes]] = Counter()  # final "." sent
        self._echoed: Counter[tuple[bytes, bytes]] = Counter()  # final "." echoed
        self._ends_must: Counter[tuple[bytes, bytes]] = Counter()

    # smtpd -> filter

    def sent(self, chunk: bytes, *, must: bool = False) -> None:
        self.tally.inputs += 1
        whole = must and self._in.at_boundary and chunk.endswith(b"\n")
        for line in self._in.feed(chunk):
            if not line.startswith(b"filter|"):
                continue
            fields = line.split(b"|", 7)
            if len(fields) < 7 or not fields[5] or not fields[6]:
                continue
            version = VERSIONS.get(fields[1])
            phase = fields[4].decode("latin-1")
            # smtpd's lines are at most ~66 KB (a 65535-byte DATA line and its prefix, §5.6)
            good = (whole and version is not None and bool(_STAMP.match(fields[2]))
                    and len(line) <= 65535 + 256
                    and fields[3] == b"smtp-in" and phase in PHASES and len(fields) == 8)
            key = (fields[5], fields[6])
            if phase == "data-line":
                if fields[7:] == [b"."]:
                    self._ends[key] += 1
                    self._ends_must[key] += good
                else:
                    self._data[key] += 1
                continue
            self._queries.setdefault(key, deque()).append(
                _Query(phase, version or (0, 99), good))

    # filter -> smtpd

    def received(self, data: bytes) -> None:
        for line in self._out.feed(data):
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not self.registered:
            self._registration(line)
            return
        if line.startswith(b"filter-result|"):
            self._result(line)
        elif line.startswith(b"filter-dataline|"):
            self._dataline(line)
        else:
            self.tally.bad(self.tally.malformed, f"not an answer: {line[:200]!r}")

    def _registration(self, line: bytes) -> None:
        if line == b"register|ready":
            self.registered = True
            return
        parts = line.split(b"|")
        names = [p.decode("latin-1") for p in parts]
        ok = False
        if len(parts) == 4 and names[0] == "register" and names[1] == "report":
            ok = (names[2] == "smtp-in" or (names[2] == "smtp-out" and self.smtp_out)) \
                and (names[3] == "*" or names[3] in REPORT_EVENTS)
        elif len(parts) == 4 and names[:3] == ["register", "filter", "smtp-in"]:
            ok = names[3] in PHASES
        if not ok or line in self.registrations:
            self.tally.bad(self.tally.malformed, f"registration: {line!r}")
        self.registrations.add(line)

    def _pair(self, first: bytes, second: bytes) -> tuple[tuple[bytes, bytes], _Query] | None:
        """The pending query this answer is for: ``SESSION|TOKEN``, ``TOKEN|SESSION`` on
        0.4 (§1); an unsupported version may be answered either way."""
        for key, session_first in (((first, second), True), ((second, first), False)):
            queue = self._queries.get(key)
            if queue:
                query = queue[0]
                old = query.version < (0, 5)
                if query.version == (0, 99) or old != session_first:
                    queue.popleft()
                    return key, query
        return None

    def _result(self, line: bytes) -> None:
        fields = line.split(b"|", 3)
        if len(fields) < 4:
            self.tally.bad(self.tally.malformed, f"short filter-result: {line[:200]!r}")
            return
        if b"\r" in fields[3] or b"\0" in fields[3]:  # the ids are echoed as received
            self.tally.bad(self.tally.malformed, f"CR or NUL: {line[:200]!r}")
        found = self._pair(fields[1], fields[2])
        if found is None:
            self.tally.bad(self.tally.unsolicited, f"no such query: {line[:200]!r}")
            return
        _key, query = found
        self.tally.answered += 1
        if _too_long(line, fields, 2047 if query.version < (0, 7) else 65535):
            self.tally.bad(self.tally.malformed, f"{len(line)} bytes: {line[:100]!r}")
        action, _, param = fields[3].partition(b"|")
        has = b"|" in fields[3]
        self.tally.kinds[action.decode("latin-1")[:12]] += 1
        ok = False
        if action in (b"proceed", b"junk"):
            ok = not has and not (action == b"junk" and query.phase == "commit")
        elif action in (b"reject", b"disconnect"):
            ok = bool(_SMTP_REPLY.match(param))
        elif action == b"rewrite":
            ok = bool(param)
        elif action == b"report":
            ok = self.report_decision and bool(param)
        if not ok:
            self.tally.bad(self.tally.malformed, f"{query.phase}: {line[:200]!r}")

    def _dataline(self, line: bytes) -> None:
        fields = line.split(b"|", 3)
        if len(fields) < 4:
            self.tally.bad(self.tally.malformed, f"short filter-dataline: {line[:200]!r}")
            return
        for key in ((fields[1], fields[2]), (fields[2], fields[1])):
            if self._data[key] or self._ends[key]:
                break
        else:
            self.tally.bad(self.tally.unsolicited, f"data line for no query: {line[:200]!r}")
            return
        if _too_long(line, fields, 65535):
            self.tally.bad(self.tally.malformed, f"{len(line)}-byte data line")
        if fields[3] == b".":
            self.tally.kinds["."] += 1
            self._echoed[key] += 1
            self.tally.answered += 1
            if self._echoed[key] > self._ends[key]:
                self.tally.bad(self.tally.doubled, f"'.' echoed twice: {line[:200]!r}")

    def pending_must(self) -> int:
        """Queries and final dots that must be answered and are not (yet)."""
        queries = sum(1 for queue in self._queries.values() for q in queue if q.must)
        dots = sum(max(0, self._ends_must[k] - self._echoed[k]) for k in self._ends_must)
        return queries + dots

    def finish(self) -> Tally:
        for key, queue in self._queries.items():
            for query in queue:
                if query.must:
                    self.tally.bad(self.tally.unanswered, f"{query.phase} {key!r}")
        for key, count in self._ends_must.items():
            if self._echoed[key] < count:
                self.tally.bad(self.tally.unanswered, f"final '.' of {key!r}")
        if self._out.buf:
            self.tally.bad(self.tally.malformed, f"unterminated line {self._out.buf[:80]!r}")
        return self.tally
