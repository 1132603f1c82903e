"""smtpd's side of the fuzz: what smtpd writes to tables and filters, then made hostile.

Requests are written by hand from the reference (table-protocols.md §1.5, §2, §3.3;
filter-protocol.md §2–§4), not with opensmtpd's encoders. ``Mutator`` bends them: flipped
and inserted bytes, cut and doubled fields, empty and huge ids, non-UTF-8, ``%``, stray
newlines, lines past every limit, lines split over several writes.

Every generator takes a ``random.Random``: a run is reproduced from its seed.
"""

from __future__ import annotations

import random
import struct

SERVICES = ("alias", "domain", "credentials", "netaddr", "userinfo", "source", "mailaddr",
            "addrname", "mailaddrmap", "relayhost", "string", "regex", "auth")
CODES = {name: 1 << i for i, name in enumerate(SERVICES)}  # K_ALIAS 0x001 … K_AUTH 0x1000
# Words the fuzz children react to (children/*.py): raise, return garbage, stall, exit…
TRIGGERS = ("raise", "tempfail", "badtype", "newline", "surrogate", "nul", "long", "list",
            "none", "percent%s%d", "slow")
# A child that exits is down for its back-off, every request meanwhile answered -1: rarer.
BRIDGE_TRIGGERS = ("garbage", "wrongid", "double", "partial", "huge", "nulvalue", "crlf",
                   "hang", "error") * 4 + ("exit", "silent-exit")
HOSTILE = (b"", b"|", b"||", b"%", b"%s%n%(x)s", b"\xff\xfe", b"\xc3", b"\x00", b"\r",
           b"\r\n", b"\t", b" ", b"\xed\xa0\x80", b"config|ready", b"table|0.1|",
           b"register|ready", b"filter|0.7|", b"report|0.7|", b".", b"..")


ODD_IDS = (b"", b"S\xff", b"\xff\xfe", b"%s%n", b"\xed\xa0\x80", b"i" * 2000, b" ", b"0",
           b"\r", b"a\x00b")


def stamp(rng: random.Random) -> bytes:
    return b"%d.%06d" % (rng.randrange(1_500_000_000, 1_900_000_000), rng.randrange(10**6))


def key(rng: random.Random, triggers: tuple[str, ...] = TRIGGERS) -> bytes:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(triggers).encode() + b"-" + rng.randbytes(2).hex().encode()
    if roll < 0.25:
        return bytes(rng.choice(b"abc|:@.\xff\xe9 %\t") for _ in range(rng.randrange(1, 40)))
    if roll < 0.3:
        return b"k" * rng.choice((1023, 2000, 5000))
    user = rng.choice((b"alice", b"bob", b"root", b"postmaster", b"x"))
    return rng.choice((user, user + b"@example.org", b"192.0.2.%d" % rng.randrange(256),
                       b"example.org", user + b":password"))


class Ids:
    """Unique request ids in smtpd's shapes: %08x (native), %016x (2020)."""

    def __init__(self, rng: random.Random, width: int) -> None:
        self.n = rng.randrange(1 << 28)
        self.width = width

    def __call__(self) -> bytes:
        self.n += 1
        return b"%0*x" % (self.width, self.n & ((1 << (4 * self.width)) - 1))


def native_request(rng: random.Random, ids: Ids, table: bytes = b"fuzz",
                   triggers: tuple[str, ...] = TRIGGERS) -> bytes:
    """One line as table_proc_send() writes it (§3.3)."""
    op = rng.choice(("lookup", "lookup", "check", "fetch", "update"))
    head = b"table|0.1|" + stamp(rng) + b"|" + table + b"|" + op.encode()
    if op == "update":
        return head + b"|" + ids() + b"\n"
    service = rng.choice(SERVICES).encode()
    if op == "fetch":
        return head + b"|" + service + b"|" + ids() + b"\n"
    return head + b"|" + service + b"|" + ids() + b"|" + key(rng, triggers) + b"\n"


def procexec2020_request(rng: random.Random, ids: Ids) -> bytes:
    """The unnamed form of table-procexec @93055be9 or the named form of the 2020
    libraries (table-protocols.md §2)."""
    op = rng.choice(("lookup", "lookup", "check", "fetch", "update"))
    named = b"fuzz|" if rng.random() < 0.5 else b""
    head = b"table|0.1|" + stamp(rng) + b"|" + named + op.encode() + b"|" + ids()
    if op == "update":
        return head + b"\n"
    service = rng.choice(SERVICES).encode()
    if op == "fetch":
        return head + b"|" + service + b"\n"
    return head + b"|" + service + b"|" + key(rng) + b"\n"


def native_handshake(rng: random.Random, hostile: bool) -> list[bytes]:
    lines = [b"config|smtpd-version|7.6.0-portable\n", b"config|protocol|0.1\n",
             b"config|tablename|fuzz\n"]
    if hostile:
        extra = rng.choice((
            [b"config|k|v\n"] * rng.randrange(100, 2000),
            [b"config|x%d|" % i + b"v" * 60000 + b"\n" for i in range(rng.randrange(2, 20))],
            [b"config|tablename|a%zb%s%(x)s\n"],
            [b"config|\xff\xfe|\xc3\n", b"config||\n", b"config|a|b|c\n"],
        ))
        lines[rng.randrange(len(lines) + 1):0] = extra
    return [*lines, b"config|ready\n"]


# --- imsg (§1.2–§1.5) ---

HEADER = struct.Struct("=IHHII")


def frame(kind: int, payload: bytes, pid: int = 4242) -> bytes:
    return HEADER.pack(kind, HEADER.size + len(payload), 0, 0, pid) + payload


def imsg_open(name: bytes = b"fuzz", version: int = 2) -> bytes:
    return frame(2, struct.pack("=I2048s", version, name[:2047]))


def imsg_request(rng: random.Random, triggers: tuple[str, ...] = TRIGGERS) -> bytes:
    kind = rng.choice((6, 6, 5, 7, 4))
    if kind == 4:
        return frame(4, b"")
    code = CODES[rng.choice(SERVICES[:12])]  # smtpd <= 7.5 has no K_AUTH
    payload = struct.pack("=iQ", code, 0)
    if kind != 7:
        payload += key(rng, triggers)[:1023].replace(b"\0", b"") + b"\0"
    return frame(kind, payload)


def imsg_mutate(rng: random.Random, message: bytes) -> bytes:
    """A message bent while its length stays framable (16…16384, consistent)."""
    kind, _length, flags, peer, pid = HEADER.unpack_from(message)
    payload = bytearray(message[HEADER.size:])
    roll = rng.randrange(9)
    if roll == 0:
        kind = rng.choice((0, 1, 3, 8, 255, 0xFFFFFFFF, 2, 4, 5, 6, 7))
    elif roll == 1 and payload:
        payload[rng.randrange(len(payload))] = rng.randrange(256)
    elif roll == 2:
        del payload[rng.randrange(len(payload) + 1):]
    elif roll == 3:
        payload += rng.randbytes(rng.randrange(1, 64))
    elif roll == 4 and len(payload) >= 12:
        payload[4:12] = struct.pack("=Q", rng.choice((1, 2, 64, 1 << 40, (1 << 64) - 1)))
    elif roll == 5 and len(payload) >= 4:
        payload[0:4] = struct.pack("=i", rng.choice((0, -1, 0x1000, 0x7FFFFFFF, 3, 0xfff)))
    elif roll == 6:
        payload = bytearray(rng.randbytes(rng.randrange(0, 16368)))
    elif roll == 7:
        flags, peer = rng.randrange(1 << 16), rng.randrange(1 << 32)
    else:
        payload[rng.randrange(len(payload) + 1):0] = b"\0" * rng.randrange(1, 4)
    payload = payload[:16368]
    return HEADER.pack(kind, HEADER.size + len(payload), flags, peer, pid) + bytes(payload)


# --- filters (filter-protocol.md §2–§4) ---


def filter_handshake(rng: random.Random, version: str, hostile: bool) -> list[bytes]:
    smtpd = {"0.4": b"6.6.4p1", "0.6": b"6.8.0p2", "0.7": b"7.6.0-portable"}[version]
    lines = [b"config|smtpd-version|" + smtpd + b"\n"]
    if version == "0.7":
        lines.append(b"config|protocol|0.7\n")
    lines.append(b"config|smtp-session-timeout|300\n")
    if version != "0.4":
        lines += [b"config|subsystem|smtp-in\n", b"config|subsystem|smtp-out\n",
                  b"config|admd|mx.example.org\n"]
    if hostile:
        lines += rng.choice(([b"config|k|v\n"] * rng.randrange(100, 3000),
                             [b"config|x|" + b"v" * 100_000 + b"\n"] * rng.randrange(1, 10),
                             [b"config|%s%n|%(x)s\n", b"config|\xff|\xfe\n", b"config\n"]))
    return [*lines, b"config|ready\n"]


class Session:
    """One smtp-in session as smtpd reports and queries it, event by event."""

    def __init__(self, rng: random.Random, version: bytes, tokens: dict[str, bytes],
                 subsystem: bytes = b"smtp-in") -> None:
        self.rng = rng
        self.version = version
        self.tokens = tokens
        self.subsystem = subsystem
        self.id = rng.randbytes(8).hex().encode()
        self.steps = self._script()

    def _report(self, event: str, *params: bytes) -> bytes:
        tail = b"".join(b"|" + p for p in params)
        return (b"report|" + self.version + b"|" + stamp(self.rng) + b"|" + self.subsystem
                + b"|" + event.encode() + b"|" + self.id + tail + b"\n")

    def _query(self, phase: str, param: bytes) -> bytes:
        return (b"filter|" + self.version + b"|" + stamp(self.rng) + b"|smtp-in|"
                + phase.encode() + b"|" + self.id + b"|" + self.tokens[phase] + b"|"
                + param + b"\n")

    def _param(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.3:
            return rng.choice(("reject", "junk", "rewrite", "report", "raise", "bad", "disc",
                               "surrogate", "cr", "long", "slow", "none")).encode() \
                + b"-" + rng.choice(HOSTILE)
        return rng.choice((b"alice@example.org", b"", b"mx.example.org", b"PLAIN dGVzdA==",
                           b"a|b|c", b"\xff\xfe@x"))

    def _script(self) -> list[tuple[bytes, bool]]:
        """(line, is a query or final dot smtpd waits on) in smtpd's order (§3, §4)."""
        rng, r, q = self.rng, self._report, self._query
        msgid = b"%08x" % rng.randrange(1 << 32)
        steps = [(r("link-connect", b"mail.example.org", b"pass", b"192.0.2.1:4242",
                    b"192.0.2.2:25"), False),
                 (q("connect", b"mail.example.org|192.0.2.1"), True),
                 (r("link-greeting", b"mx.example.org"), False),
                 (r("protocol-client", b"EHLO " + self._param()), False),
                 (q("ehlo", self._param()), True),
                 (r("link-identify", b"EHLO", b"mail.example.org"), False)]
        if rng.random() < 0.3:
            auth = [b"pass", self._param()] if self.version >= b"0.7" else [self._param(),
                                                                            b"pass"]
            steps += [(q("auth", b"PLAIN " + self._param()), True),
                      (r("link-auth", *auth), False)]
        steps += [(r("tx-begin", msgid), False), (q("mail-from", self._param()), True),
                  (r("tx-mail", msgid, b"ok", self._param()), False),
                  (q("rcpt-to", self._param()), True),
                  (r("tx-rcpt", msgid, b"ok", self._param()), False),
                  (q("data", b""), True), (r("tx-data", msgid, b"ok"), False)]
        for _ in range(rng.randrange(0, 12)):
            line = rng.choice((b"Subject: hi", b"", b"..leading dot", b"body " + self._param(),
                               b"x" * rng.choice((10, 3000, 70000)), b"a|b|c", b"\xff\xfe"))
            steps.append((q("data-line", line), False))
        steps += [(q("data-line", b"."), True), (q("commit", b""), True),
                  (r("tx-commit", msgid, b"%d" % rng.randrange(10**6)), False),
                  (r("tx-reset", msgid), False)]
        if rng.random() < 0.2:
            steps.append((q(rng.choice(("rset", "noop", "quit", "helo", "starttls", "help",
                                        "wiz")), b""), True))
        steps.append((r(rng.choice(("link-disconnect", "timeout"))), False))
        if rng.random() < 0.1:
            steps.append((r("made-up-event", b"x"), False))
        return steps


# --- mutations of one line ---


def mutate_line(rng: random.Random, line: bytes) -> bytes:
    body = bytearray(line[:-1] if line.endswith(b"\n") else line)
    fields = bytes(body).split(b"|")
    roll = rng.randrange(18)
    if roll >= 16 and len(fields) > 6:  # the id / session / token fields, replaced
        odd = rng.choice(ODD_IDS)
        fields[rng.choice((5, 6))] = odd + rng.randbytes(4).hex().encode() if odd else odd
        return b"|".join(fields) + b"\n"
    if roll == 0 and body:
        body[rng.randrange(len(body))] = rng.randrange(256)
    elif roll == 1:
        body[rng.randrange(len(body) + 1):0] = rng.choice(HOSTILE)
    elif roll == 2 and body:
        start = rng.randrange(len(body))
        del body[start:start + rng.randrange(1, 20)]
    elif roll == 3:
        index = rng.randrange(len(fields))
        fields[index] = b""  # an empty field: an empty id, service, version…
        body = bytearray(b"|".join(fields))
    elif roll == 4:
        index = rng.randrange(len(fields))
        fields[index] = fields[index] * rng.choice((2, 100)) or b"x" * 2000  # a huge field
        body = bytearray(b"|".join(fields))
    elif roll == 5:
        index = rng.randrange(len(fields))
        fields.insert(index, fields[index])  # a doubled field
        body = bytearray(b"|".join(fields))
    elif roll == 6 and len(fields) > 1:
        del fields[rng.randrange(len(fields))]  # a missing field
        body = bytearray(b"|".join(fields))
    elif roll == 7:
        body += b"|" + b"y" * rng.choice((70_000, 300_000))  # past every line limit
    elif roll == 8:
        body[rng.randrange(len(body) + 1):0] = b"\n"  # one line becomes two
    elif roll == 9:
        body = bytearray(bytes(body).replace(b"|", b"|\xff", 1))
    elif roll == 10:
        body = bytearray(rng.randbytes(rng.randrange(1, 80)))
    elif roll == 11:
        index = rng.randrange(len(fields))
        fields[index] = b"%s%n%(x)s" + fields[index]
        body = bytearray(b"|".join(fields))
    elif roll == 12:
        body = body[:rng.randrange(len(body) + 1)]  # cut short
    elif roll == 13:
        body += b"\r"
    elif roll == 14:
        fields[1:2] = [rng.choice((b"0.1", b"0.4", b"0.5", b"0.6", b"0.7", b"0.8", b"1",
                                   b"", b"0.x", b"9.9"))]
        body = bytearray(b"|".join(fields))
    else:
        index = rng.randrange(len(fields))
        fields[index] = b"\xed\xa0\x80" + fields[index]  # an encoded surrogate
        body = bytearray(b"|".join(fields))
    return bytes(body) + b"\n"


def split(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` as smtpd might have it arrive: usually whole, sometimes in pieces."""
    if len(data) < 2 or rng.random() < 0.8:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
