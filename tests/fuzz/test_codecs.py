"""Every sans-IO codec, both ends, under hypothesis: any bytes in any pieces never raise
anything but the documented error, and every reply a codec builds passes grammar.py
(the independent judge), carrying an id that was sent."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opensmtpd.filter import Filter, junk, reject
from opensmtpd.filter.wire import DataLine, FilterSide, Malformed, Query, dataline, parse_line
from opensmtpd.procexec import Bridge, Settings
from opensmtpd.table.wire import imsg, native, procexec2020
from opensmtpd.table.wire.events import (
    Answer,
    Error,
    Found,
    NotFound,
    Op,
    Open,
    Ready,
    Registered,
    Request,
    Updated,
)
from opensmtpd.table.wire.events import Malformed as TableMalformed
from opensmtpd.table.wire.services import Service
from opensmtpd.wire import ProtocolViolation

from . import budget, grammar, inputs


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """Hostile input logs a lot; the level is put back for the tests that read logs."""
    logger = logging.getLogger("opensmtpd")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


FUZZ = settings(max_examples=budget.CODEC_EXAMPLES, deadline=None, derandomize=not budget.LONG,
                suppress_health_check=list(HealthCheck))
REPLIES = [Found("v@example.org"), Found(None), Found(""), Found("a\nb"), Found("x\ud800"),
           NotFound(), Error("down %s\r\n"), Error(""), Updated()]

# Byte soup biased toward the protocols' own pieces, so that parsers get past their
# first checks: fields, separators, ids, versions, odd bytes.
PIECES = st.sampled_from([b"table", b"|", b"0.1", b"config", b"ready", b"tablename", b"lookup",
                          b"check", b"fetch", b"update", b"alias", b"credentials", b"auth",
                          b"\n", b"\xff", b"%s", b"", b"00000001", b"filter", b"report",
                          b"0.4", b"0.6", b"0.7", b"data-line", b"smtp-in", b".", b"register"])
SOUP = st.lists(st.one_of(PIECES, st.binary(max_size=12)), max_size=60).map(b"".join)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@st.composite
def native_stream(draw: st.DrawFn) -> bytes:
    rng = draw(st.randoms(use_true_random=False))
    ids = inputs.Ids(rng, 8)
    out = inputs.native_handshake(rng, hostile=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 12))):
        line = inputs.native_request(rng, ids)
        out.append(inputs.mutate_line(rng, line) if draw(st.booleans()) else line)
    out.append(draw(SOUP))
    return b"".join(out)


def _drive_line_codec(side: Any, data: bytes, cuts: list[int], dialect: str) -> None:
    judge = grammar.LineTableJudge(dialect)
    judge.registered = True  # what is judged here is the replies, not the registration
    judge.sent(data)
    for piece in pieces(data, cuts):
        side.receive_data(piece)
        while (event := side.next_event()) is not None:
            if isinstance(event, Request | TableMalformed) and event.id is not None:
                assert event.op is not None
                for reply in REPLIES:
                    try:
                        encoded = side.send(Answer(event.op, event.id, reply))
                    except UnicodeEncodeError:
                        continue  # the runtime answers error then (one place, runtime.py)
                    judge.received(encoded)
    tally = judge.tally
    assert not (tally.malformed or tally.unsolicited), tally.details()


@FUZZ
@given(native_stream(), st.lists(st.integers(0, 1 << 20), max_size=6))
def test_native_table_side(data: bytes, cuts: list[int]) -> None:
    _drive_line_codec(native.TableSide(), data, cuts, "native")


@FUZZ
@given(st.lists(st.one_of(SOUP, st.randoms(use_true_random=False).map(
    lambda r: inputs.mutate_line(r, inputs.procexec2020_request(r, inputs.Ids(r, 16))))),
    max_size=12).map(b"".join), st.lists(st.integers(0, 1 << 20), max_size=6))
def test_procexec2020_table_side(data: bytes, cuts: list[int]) -> None:
    _drive_line_codec(procexec2020.TableSide(), data, cuts, "2020")


@FUZZ
@given(st.sampled_from(list(Op)), st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
       SOUP.map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_smtpd_side_reply_parsers(op: Op, ident: str, line: str) -> None:
    """smtpd's end (driver, bridge): only ProtocolViolation, never anything else."""
    for candidate in (line, f"{op.value}-result|{ident}|{line}", f"table-result|{ident}|{line}"):
        with contextlib.suppress(ProtocolViolation):
            native.parse_reply(op, ident, candidate)
        with contextlib.suppress(ProtocolViolation):
            native.parse_registration(candidate)
        procexec2020.parse_reply(op, ident, candidate)


REPLY_PIECES = st.sampled_from([b"register|", b"alias", b"ready", b"none", b"-result|",
                                 b"lookup", b"check", b"fetch", b"update", b"table-result|",
                                 b"found", b"not-found", b"error", b"ok", b"updated",
                                 b"failure", b"|", b"\n", b"0000000a", b"000000000000000a"])
TABLE_WRITES = st.lists(st.one_of(REPLY_PIECES, st.binary(max_size=12)), max_size=60).map(
    b"".join)


@st.composite
def imsg_replies(draw: st.DrawFn) -> bytes:
    out = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from([imsg.PROC_TABLE_OK, imsg.PROC_TABLE_OK, imsg.PROC_TABLE_FAIL]))
        result = imsg.RESULT.pack(draw(st.integers(-2, 2)))
        payload = draw(st.sampled_from([b"", result, result + b"v\0", result + b"v"]))
        out.append(imsg.message(kind, payload, 1))
    return b"".join(out) + draw(st.binary(max_size=24))


@FUZZ
@given(st.sampled_from(["native", "imsg", "2020"]), st.data(),
       st.lists(st.integers(0, 1 << 20), max_size=6),
       st.lists(st.sampled_from(list(Op)), min_size=1, max_size=6))
def test_smtpd_sides(protocol: str, data: st.DataObject, cuts: list[int], ops: list[Op]) -> None:
    """smtpd's end of each protocol (driver, conformance battery): whatever a table writes,
    in any pieces, only ProtocolViolation where smtpd exits (native, imsg; never in the
    2020 dialect), and every Answer answers a request sent, in the order sent."""
    written = data.draw(imsg_replies() if protocol == "imsg" else TABLE_WRITES)
    side: Any = {"native": native.SmtpdSide, "imsg": imsg.SmtpdSide,
                 "2020": procexec2020.SmtpdSide}[protocol]()
    side.send(Open("t"))
    sent: list[tuple[Op, str]] = []
    try:
        for piece in pieces(written, cuts):
            side.receive_data(piece)
            while (event := side.next_event()) is not None:
                if isinstance(event, Registered):
                    for number, op in enumerate(ops):
                        request_id = f"{number:08x}"
                        service = None if op is Op.UPDATE else Service.ALIAS
                        side.send(Request(op, request_id, "t", service, "k", "alias"))
                        sent.append((op, request_id))
                    continue
                assert isinstance(event, Answer) and sent, event
                assert (event.op, event.id) == sent.pop(0)
                assert isinstance(event.reply, Found | NotFound | Error | Updated)
    except ProtocolViolation:
        assert protocol != "2020"


@st.composite
def imsg_stream(draw: st.DrawFn) -> bytes:
    rng = draw(st.randoms(use_true_random=False))
    out = [inputs.imsg_open()]
    for _ in range(draw(st.integers(0, 12))):
        message = inputs.imsg_request(rng)
        out.append(inputs.imsg_mutate(rng, message) if draw(st.booleans()) else message)
    return b"".join(out)


@FUZZ
@given(imsg_stream(), st.lists(st.integers(0, 1 << 20), max_size=6),
       st.sampled_from(REPLIES))
def test_imsg_table_side(data: bytes, cuts: list[int], reply: Any) -> None:
    side = imsg.TableSide(pid=77)
    judge = grammar.ImsgJudge()
    judge.sent(data)
    for piece in pieces(data, cuts):
        side.receive_data(piece)
        while (event := side.next_event()) is not None:
            if type(event).__name__ == "Hello":
                judge.received(side.send(Ready()))
            elif isinstance(event, Request | TableMalformed) and event.id is not None:
                assert event.op is not None
                try:
                    encoded = side.send(Answer(event.op, event.id, reply))
                except UnicodeEncodeError:  # the runtime answers error then (runtime.py)
                    encoded = side.send(Answer(event.op, event.id, Error("unencodable")))
                judge.received(encoded)
    tally = judge.finish()
    assert not tally.problems, tally.details()


@FUZZ
@given(st.sampled_from([*list(Op), None]), st.integers(-3, 9), st.binary(max_size=40))
def test_imsg_reply_parser(op: Op | None, kind: int, payload: bytes) -> None:
    with contextlib.suppress(ProtocolViolation):
        imsg.parse_reply(op, kind, payload)


@FUZZ
@given(imsg_stream(), st.lists(SOUP, max_size=8), st.lists(st.integers(0, 3), max_size=20))
def test_bridge_core(smtpd: bytes, child: list[bytes], steps: list[int]) -> None:
    """table-procexec's sans-IO core: whatever smtpd and the child send, in any order,
    with the clock moving, each imsg request gets one well-formed reply, in order."""
    bridge = Bridge(Settings(protocol="auto", deadline=1.0, handshake_timeout=1.0), pid=5)
    judge = grammar.ImsgJudge()
    judge.sent(smtpd)
    now = 0.0
    chunks = pieces(smtpd, [len(smtpd) // 3, 2 * len(smtpd) // 3])
    for step in steps or [0, 0, 0]:
        if step == 0 and chunks:
            bridge.receive_smtpd(chunks.pop(0), now)
        elif step == 1 and child and bridge.child_pid is not None:
            bridge.receive_child(child.pop(0), now)
        elif step == 2:
            if bridge.spawn_due(now):
                bridge.child_started(1000, now)
            elif bridge.child_pid is not None:
                bridge.child_exited("exited with status 1", now)
        else:
            now += 0.7
            bridge.tick(now)
        bridge.take_child_output()
        judge.received(bridge.take_smtpd_output())
    for chunk in chunks:
        bridge.receive_smtpd(chunk, now)
    for _ in range(4):  # let every deadline pass: all is answered by then
        now += 1.5
        bridge.tick(now)
        if bridge.spawn_due(now):
            bridge.child_started(1001, now)
    judge.received(bridge.take_smtpd_output())
    tally = judge.finish()
    assert not tally.problems, tally.details()


def _filter() -> Filter:
    f = Filter(on_error="tempfail", deadline=0.1)

    @f.on_phase("mail-from", "rcpt-to", "connect", "helo", "commit")
    def decide(session: Any, query: Any) -> Any:
        word = query.param.partition("-")[0]
        if word == "raise":
            raise RuntimeError(query.param)
        if word == "junk":
            return junk()
        if word == "surrogate":
            return reject("550 \ud800")
        return reject("550 no") if "reject" in query.param else None

    @f.on_report("*", subsystem="*")
    def seen(session: Any, event: Any) -> None:
        if "raise" in str(event):
            raise RuntimeError("report")

    @f.on_message
    def message(session: Any, lines: list[str]) -> Any:
        if any("surrogate" in line for line in lines):
            return ["\ud800"]
        if any("raise" in line for line in lines):
            raise RuntimeError("message")
        return [f"X-Session: {session.id}", *lines]

    return f


@st.composite
def filter_stream(draw: st.DrawFn) -> bytes:
    rng = draw(st.randoms(use_true_random=False))
    version = draw(st.sampled_from(["0.4", "0.6", "0.7"]))
    out = inputs.filter_handshake(rng, version, hostile=draw(st.booleans()))
    tokens = {p: rng.randbytes(8).hex().encode() for p in grammar.PHASES}
    session = inputs.Session(rng, version.encode(), tokens)
    for line, _ in session.steps[:draw(st.integers(0, len(session.steps)))]:
        out.append(inputs.mutate_line(rng, line) if draw(st.booleans()) else line)
    out.append(draw(SOUP))
    return b"".join(out)


@FUZZ
@given(filter_stream(), st.lists(st.integers(0, 1 << 20), max_size=6))
def test_filter_side_and_dispatch(data: bytes, cuts: list[int]) -> None:
    """FilterSide never raises; every query, dispatched through the one guarded place
    (_runtime.settle, what Filter.feed runs), is answered exactly once, well-formed, with
    the ids it carried."""
    side, app = FilterSide(), _filter()
    judge = grammar.FilterJudge(smtp_out=True, report_decision=True)
    for piece in pieces(data, cuts):
        side.receive_data(piece)
        while (event := side.next_event()) is not None:
            if isinstance(event, Query | DataLine) or (
                    isinstance(event, Malformed) and event.query is not None):
                query = event.query if isinstance(event, Malformed) else event
                assert query is not None
                phase, param = ((query.phase, query.param) if isinstance(query, Query)
                                else ("data-line", query.line))
                judge.sent(f"filter|{query.version}|1.000000|smtp-in|{phase}|"
                           f"{query.session}|{query.token}|{param}\n"
                           .encode("utf-8", "surrogateescape"), must=True)
        judge.received(app.feed(piece))  # the same bytes, through the filter's own pipe
    tally = judge.tally
    assert not (tally.malformed or tally.unsolicited or tally.doubled), tally.details()
    assert judge.pending_must() == 0, judge.finish().details()  # answered as dispatched


@FUZZ
@given(SOUP.map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_filter_line_parser(line: str) -> None:
    parse_line(line)  # never raises


@FUZZ
@given(st.text(max_size=200), st.integers(4, 70000))
def test_dataline_helpers(text: str, limit: int) -> None:
    try:
        lines = dataline.output_lines(text, "orig")
    except TypeError:
        return  # a lone surrogate: refused, where the policy answers
    for line in lines:
        for piece in dataline.for_smtpd(line, limit):
            encoded = piece.encode("utf-8", "surrogateescape")
            assert b"\n" not in encoded
            assert len(encoded) <= max(limit, 5) or len(piece) == len(dataline.stuff(line))
            assert dataline.unstuff(dataline.stuff(line)) == line
