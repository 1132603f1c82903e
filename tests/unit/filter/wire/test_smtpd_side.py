"""smtpd's end of the pipe: what smtpd writes (re-encoded byte for byte from the real
transcripts), and what a filter writes judged as lka judges it — ProtocolViolation, with
smtpd's own message, exactly where smtpd 6.8, 7.6 or 7.9 exits (filter-protocol.md §5.1)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensmtpd.filter import Filter, disconnect, junk, proceed, reject, report, rewrite
from opensmtpd.filter.wire import (
    Config,
    DataLine,
    DataLines,
    Decision,
    FilterSide,
    ProtocolViolation,
    Query,
    Registration,
    Result,
    SmtpdSide,
    parse_line,
    protocol_of,
    smtpd_config,
)
from opensmtpd.filter.wire import events as ev
from opensmtpd.smtpd_version import SmtpdVersion
from opensmtpd.wire import ProtocolViolation as SharedViolation

from .. import transcripts
from ..transcripts import VERSIONS

SID, TOKEN, DATA_TOKEN = "0123456789abcdef", "00000000000000f1", "00000000000000f2"


def answers(side: SmtpdSide, data: bytes) -> list[ev.Answer]:
    side.receive_data(data)
    return list(iter(side.next_event, None))


def ready(smtpd: str = "7.6.0-portable", registered: bytes = b"") -> SmtpdSide:
    side = SmtpdSide()
    side.send(smtpd_config(smtpd))
    answers(side, registered + b"register|ready\n")
    return side


def query(side: SmtpdSide, phase: str, param: str = "", version: str | None = None) -> Query:
    q = Query(version or protocol_of(side.version), 1.0, "smtp-in", phase, SID, TOKEN, param)
    side.send(q)
    return q


def data(side: SmtpdSide, line: str) -> DataLine:
    d = DataLine(protocol_of(side.version), 1.0, "smtp-in", SID, DATA_TOKEN, line)
    side.send(d)
    return d


def test_the_one_violation_class() -> None:
    assert ProtocolViolation is SharedViolation


@pytest.mark.parametrize(("smtpd", "keys"), [
    ("6.6.4p1", ["smtpd-version", "smtp-session-timeout"]),
    ("6.8.0p2", ["smtpd-version", "smtp-session-timeout", "subsystem", "admd"]),
    ("7.6.0-portable", ["smtpd-version", "protocol", "smtp-session-timeout", "subsystem",
                        "admd"]),
])
def test_handshake_of_each_generation(smtpd: str, keys: list[str]) -> None:
    config = smtpd_config(smtpd)
    assert [key for key, _ in config.items] == keys
    wire = SmtpdSide().send(config)
    assert wire.endswith(b"config|ready\n") and wire.startswith(b"config|smtpd-version|")
    side = FilterSide()
    side.receive_data(wire)
    parsed = side.next_event()
    assert parsed == config


@pytest.mark.parametrize("smtpd", VERSIONS)
def test_every_real_line_re_encoded_byte_for_byte(smtpd: str) -> None:
    """What smtpd wrote, parsed then sent again by SmtpdSide, is the same bytes."""
    side = SmtpdSide()
    for run in transcripts.runs(smtpd):
        handshake = [line for line in run if line.startswith("config|")]
        filter_side = FilterSide()
        filter_side.receive_data(("\n".join(handshake) + "\n").encode())
        config = filter_side.next_event()
        assert isinstance(config, Config)
        assert side.send(config).decode().splitlines() == handshake
        for line in run[len(handshake):]:
            event = parse_line(line)
            assert not isinstance(event, ev.Malformed)
            assert side.send(event).decode() == line + "\n"  # type: ignore[arg-type]


VERSIONS_ALL = ("0.4", "0.5", "0.6", "0.7")
REPORTS = [
    ev.LinkConnect("", 1.5, "smtp-in", SID, "r|d|ns", "pass", "[::1]:25", "unix:/x"),
    ev.LinkDisconnect("", 1.5, "smtp-out", SID), ev.Timeout("", 1.5, "smtp-in", SID),
    ev.LinkGreeting("", 1.5, "smtp-in", SID, "mx.test"),
    ev.LinkIdentify("", 1.5, "smtp-in", SID, "EHLO", "a|b"),
    ev.LinkTLS("", 1.5, "smtp-in", SID, "TLSv1.3:X:256"),
    ev.LinkAuth("", 1.5, "smtp-in", SID, "pass", "al|ice"),
    ev.TxReset("", 1.5, "smtp-in", SID, "0000abcd"),
    ev.TxBegin("", 1.5, "smtp-in", SID, "0000abcd"),
    ev.TxMail("", 1.5, "smtp-in", SID, "0000abcd", "ok", "a|b@c.test"),
    ev.TxRcpt("", 1.5, "smtp-in", SID, "0000abcd", "tempfail", ""),
    ev.TxEnvelope("", 1.5, "smtp-in", SID, "0000abcd", "0000abcd00000001"),
    ev.TxData("", 1.5, "smtp-in", SID, "0000abcd", "ok"),
    ev.TxCommit("", 1.5, "smtp-in", SID, "0000abcd", 1234),
    ev.TxRollback("", 1.5, "smtp-in", SID, "0000abcd"),
    ev.ProtocolClient("", 1.5, "smtp-in", SID, "MAIL FROM:<a|b>"),
    ev.ProtocolServer("", 1.5, "smtp-in", SID, "250 2.0.0 Ok | yes"),
    ev.FilterReport("", 1.5, "smtp-in", SID, "builtin", "trusted", "a | b"),
    ev.FilterResponse("", 1.5, "smtp-in", SID, "rcpt-to", "reject", "550 no|x"),
    ev.FilterResponse("", 1.5, "smtp-in", SID, "helo", "proceed", None),
    ev.UnknownReport("", 1.5, "stats", SID, "queue-size", "1|2"),
]


@pytest.mark.parametrize("version", VERSIONS_ALL)
@pytest.mark.parametrize("report_", REPORTS, ids=lambda r: r.name)
def test_reports_round_trip_in_every_field_order(version: str, report_: ev.Report) -> None:
    sent = dataclasses.replace(report_, version=version)
    wire = SmtpdSide().send(sent).decode()
    assert parse_line(wire.removesuffix("\n")) == sent
    if isinstance(sent, ev.LinkAuth):
        assert wire.endswith("|al|ice|pass\n" if version < "0.7" else "|pass|al|ice\n")
    if isinstance(sent, ev.TxMail):
        assert wire.endswith("|a|b@c.test|ok\n" if version < "0.6" else "|ok|a|b@c.test\n")


def test_registration_as_smtpd_takes_it() -> None:
    side = SmtpdSide()
    side.send(smtpd_config("7.6.0-portable", subsystems=("smtp-in", "smtp-out")))
    got = answers(side, b"register|report|smtp-in|*\nregister|report|smtp-out|tx-mail\n"
                        b"register|report|smtp-out|tx-mail\nregister|filter|SMTP-IN|helo\n"
                        b"register|filter|smtp-in|wiz\nregister|ready\nregister|ready\n")
    assert got == [Registration({"smtp-in": ("*",), "smtp-out": ("tx-mail", "tx-mail")},
                                ("helo", "wiz"))]  # the repeat kept: smtpd doubles it
    assert side.ready


@pytest.mark.parametrize(("smtpd", "line", "message"), [
    ("7.6.0-portable", b"register|bogus|x", "Invalid register line received"),
    ("7.6.0-portable", b"register|report|smtp-sideways|x", "Invalid message direction"),
    ("7.6.0-portable", b"register|report|smtp-in", "Invalid message direction"),
    ("7.6.0-portable", b"register|report|smtp-in|link-reset", "Unrecognized report name"),
    ("7.6.0-portable", b"register|report|smtp-in|link-connect|x", "Unrecognized report name"),
    ("7.6.0-portable", b"register|filter|smtp-out|helo", "Invalid message direction"),
    ("7.6.0-portable", b"register|filter|smtp-in|connected", "Unrecognized report name"),
    ("7.9.0-portable", b"register|filter|smtp-in|wiz", "Unrecognized report name"),
    ("6.6.4p1", b"register|report|smtp-out|*", "Invalid message direction"),
    ("7.6.0-portable", b"filter-result|0123456789abcdef|00000000000000f1|proceed",
     "Non-register message before register|ready"),
])
def test_registration_violations(smtpd: str, line: bytes, message: str) -> None:
    side = SmtpdSide()
    side.send(smtpd_config(smtpd))
    with pytest.raises(ProtocolViolation, match=message.replace("|", r"\|")):
        answers(side, line + b"\n")


def test_what_older_smtpd_accepts_is_accepted() -> None:
    with pytest.raises(ProtocolViolation):  # no handshake sent: the newest smtpd's rules
        answers(SmtpdSide(), b"register|filter|smtp-in|wiz\nregister|ready\n")
    for smtpd, line in (("7.6.0-portable", b"register|filter|smtp-in|wiz"),
                        ("6.8.0p2", b"register|report|smtp-out|*")):
        side = SmtpdSide()
        side.send(smtpd_config(smtpd))
        assert answers(side, line + b"\nregister|ready\n")[0] == Registration(
            {"smtp-out": ("*",)} if b"smtp-out" in line else {}, () if b"report" in line
            else ("wiz",))


@pytest.mark.parametrize(("smtpd", "answer", "message"), [
    ("7.6.0-portable", "hello", "Invalid filter message type"),
    ("7.6.0-portable", "report|0.7|1.000000|smtp-in|x|0123456789abcdef", "Invalid report"),
    ("7.6.0-portable", "filter-result|zz|{T}|proceed", "Invalid reqid"),
    ("6.8.0p2", "filter-result||{T}|proceed", "Invalid reqid"),
    ("7.6.0-portable", "filter-result|{S}|proceed", "Invalid token"),
    ("7.6.0-portable", "filter-result|{S}|{T}x|proceed", "Invalid token"),
    ("7.6.0-portable", "filter-result|{S}|1{T}|proceed", "Invalid token"),  # overflow
    ("6.8.0p2", "filter-result|{S}", "Missing reqid"),
    ("6.8.0p2", "filter-result|{S}|{T}", "Missing directive"),
    ("7.6.0-portable", "filter-result|{S}|{T}|proceed|x", "Invalid directive"),
    ("6.8.0p2", "filter-result|{S}|{T}|proceed|x", "Unexpected parameter after proceed"),
    ("6.8.0p2", "filter-result|{S}|{T}|junk|x", "Unexpected parameter after junk"),
    ("7.6.0-portable", "filter-result|{S}|{T}|proceed\r", "Missing parameter"),  # §0: a CR
    ("6.8.0p2", "filter-result|{S}|{T}|proceed\r", "Missing parameter"),
    ("7.6.0-portable", "filter-result|{S}|{T}|reject", "Missing parameter"),
    ("7.6.0-portable", "filter-result|{S}|{T}|accept|x", "Invalid directive"),
    ("7.4.0-portable", "filter-result|{S}|{T}|report|x", "Invalid directive"),
    ("6.8.0p2", "filter-result|{S}|{T}|report|x", "Invalid directive"),
    ("7.6.0-portable", "filter-result|{S}|00000000000000aa|proceed", "misbehaving filter"),
    ("7.6.0-portable", "filter-dataline|{S}|{T}|x", "filter-dataline out of dataline phase"),
])
def test_answer_violations(smtpd: str, answer: str, message: str) -> None:
    side = ready(smtpd)
    query(side, "helo", "x")
    line = answer.replace("{S}", SID).replace("{T}", TOKEN)
    with pytest.raises(ProtocolViolation, match=message):
        answers(side, line.encode() + b"\n")


def test_each_query_answered_once() -> None:
    side = ready()
    q = query(side, "mail-from", "a@b.test")
    assert answers(side, f"filter-result|{SID}|{TOKEN}|reject|550 5.7.1 no\n".encode()) == [
        Result(q, reject("550 5.7.1 no"))]
    with pytest.raises(ProtocolViolation, match="waiting on no query"):  # smtp's tree_xpop
        answers(side, f"filter-result|{SID}|{TOKEN}|proceed\n".encode())


def test_data_phase_rules() -> None:
    side = ready()
    query(side, "data")
    answers(side, f"filter-result|{SID}|{TOKEN}|proceed\n".encode())
    first = data(side, "..dot")
    with pytest.raises(ProtocolViolation, match="filter-result in dataline phase"):
        answers(side, f"filter-result|{SID}|{TOKEN}|proceed\n".encode())
    with pytest.raises(ProtocolViolation, match="misbehaving filter"):
        answers(side, f"filter-dataline|{SID}|{TOKEN}|x\n".encode())
    end = data(side, ".")
    got = answers(side, f"filter-dataline|{SID}|{DATA_TOKEN}|..dot\n"
                        f"filter-dataline|{SID}|{DATA_TOKEN}|.\n".encode())
    assert got == [DataLines(end, (".dot",)), DataLines(end, (), end=True)]
    assert first.line == "..dot"
    q = query(side, "commit")
    with pytest.raises(ProtocolViolation, match="junk after DATA"):
        answers(side, f"filter-result|{SID}|{TOKEN}|junk\n".encode())
    with pytest.raises(ProtocolViolation, match="out of dataline phase"):
        answers(side, f"filter-dataline|{SID}|{DATA_TOKEN}|late\n".encode())
    assert answers(side, f"filter-result|{SID}|{TOKEN}|proceed\n".encode()) == [
        Result(q, proceed())]


def test_what_smtpd_tolerates() -> None:
    side = ready("6.8.0p2")
    q = query(side, "rcpt-to", "a@b.test")
    long_reply = "550 " + "x" * 3000
    # ids in any case, with leading zeros; a NUL ends the line; up to 7.3 cut at 2047 bytes
    head = f"filter-result|{SID.upper()}|00{TOKEN}|reject|"
    got = answers(side, f"{head}{long_reply}\0junk\n".encode())
    assert got == [Result(q, Decision("reject", long_reply[:2047 - len(head)]))]
    # a session that ended: its late answer is ignored
    side.send(ev.LinkDisconnect("0.6", 2.0, "smtp-in", SID))
    assert answers(side, f"filter-result|{SID}|{TOKEN}|proceed\n".encode()) == []
    assert answers(side, f"filter-result|{'f' * 16}|{TOKEN}|proceed\n".encode()) == []
    # from 7.4 an empty session id reads as 0 (strtoull converts nothing): no such session
    side = ready()
    query(side, "helo", "x")
    assert answers(side, f"filter-result||{TOKEN}|proceed\n".encode()) == []


def test_a_line_smtpd_never_reads_whole() -> None:
    side = ready()
    with pytest.raises(ProtocolViolation, match="read buffer"):
        answers(side, b"filter-dataline|" + b"x" * 65536)


def test_token_first_on_0_4() -> None:
    side = ready("6.6.4p1")
    q = query(side, "helo", "x")
    assert answers(side, f"filter-result|{TOKEN}|{SID}|junk\n".encode()) == [Result(q, junk())]


# --- our filters, judged by smtpd's end ---


def example() -> Filter:
    f = Filter(on_error="tempfail")
    decisions = {"connect": None, "helo": junk(), "ehlo": rewrite("mx.test"),
                 "mail-from": rewrite("a@b.test"), "rcpt-to": reject("550 5.1.1 no"),
                 "data": disconnect("421 4.7.0 bye"), "commit": report("seen")}

    @f.on_phase(*decisions)
    def decide(session: object, q: Query) -> object:
        if q.param == "boom":
            raise RuntimeError("handler bug")
        return decisions[q.phase]

    @f.on_data_line
    def upper(session: object, line: str) -> object:
        return [".x" + line, "y" * 3000] if line == "long" else line.upper()

    return f


@pytest.mark.parametrize("smtpd", ["6.6.4p1", "6.8.0p2", "7.4.0-portable", "7.6.0-portable",
                                   "7.9.0-portable"])
def test_a_filter_served_through_smtpds_end(smtpd: str) -> None:
    """Every line our filter writes for every phase is one this smtpd takes."""
    f, side = example(), SmtpdSide()
    registration = answers(side, f.feed(side.send(smtpd_config(smtpd))))
    assert len(registration) == 1 and isinstance(registration[0], Registration)
    assert ("wiz" in registration[0].phases) is False
    results: list[ev.Answer] = []
    for phase in ("connect", "helo", "ehlo", "mail-from", "rcpt-to", "data", "commit"):
        for param in ("x", "boom"):
            q = Query(protocol_of(side.version), 1.0, "smtp-in", phase, SID, TOKEN, param)
            results += answers(side, f.feed(side.send(q)))
    assert [type(r) for r in results] == [Result] * 14
    decisions = [r.decision for r in results if isinstance(r, Result)]
    assert decisions[1] == disconnect("421" + f.tempfail_reply[3:])  # connect, handler bug
    assert decisions[2:4] == [junk(), reject(f.tempfail_reply)]
    # report is fatal before 7.6: the policy answered instead
    assert decisions[12] == (report("seen") if side.version >= SmtpdVersion(7, 6)
                             else reject(f.tempfail_reply))
    out = b"".join(f.feed(side.send(data(side, text))) for text in ("Subject: x", "..dot",
                                                                       "long", "."))
    sent = answers(side, out)
    texts = [text for d in sent if isinstance(d, DataLines) for text in d.lines]
    assert texts[:3] == ["SUBJECT: X", ".DOT", ".xlong"]
    assert "".join(texts[3:]) == "y" * 3000
    assert isinstance(sent[-1], DataLines) and sent[-1].end


RETURNS = [None, junk(), rewrite("x"), reject("550 no"), "junk", 42, Decision("reject", "bad"),
           report("r"), disconnect("421 bye"), Decision("rewrite", "a\rb"), ["a"]]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["6.6.4p1", "6.8.0p2", "7.6.0-portable", "7.9.0-portable"]),
       st.lists(st.tuples(st.sampled_from(["connect", "helo", "mail-from", "rcpt-to", "data",
                                           "commit", "quit"]),
                          st.text(max_size=30), st.sampled_from(RETURNS)), max_size=12),
       st.lists(st.text(max_size=40), max_size=6))
def test_whatever_handlers_return_smtpd_never_exits(
        smtpd: str, steps: list[tuple[str, str, object]], lines: list[str]) -> None:
    f = Filter(on_error="tempfail")
    returns: list[object] = []

    @f.on_phase("connect", "helo", "mail-from", "rcpt-to", "data", "commit", "quit")
    def decide(session: object, q: Query) -> object:
        return returns.pop()

    @f.on_data_line
    def edit(session: object, line: str) -> object:
        return line.replace("a", "\n.")

    side = SmtpdSide()
    answers(side, f.feed(side.send(smtpd_config(smtpd))))
    for phase, param, decision in steps:
        returns.append(decision)
        got = answers(side, f.feed(side.send(Query(protocol_of(side.version), 1.0, "smtp-in",
                                                   phase, SID, TOKEN, param.replace("\n", "")))))
        assert len(got) == 1 and isinstance(got[0], Result)
    for text in [*lines, "."]:
        answers(side, f.feed(side.send(DataLine(protocol_of(side.version), 1.0, "smtp-in",
                                                SID, DATA_TOKEN, text.replace("\n", "")))))


@pytest.mark.parametrize(("text", "value", "end"), [
    ("0123456789abcdef", 0x0123456789ABCDEF, 16), ("00FF|x", 255, 4), (" \t0x1f|", 31, 6),
    ("-1", (1 << 64) - 1, 2), ("+a", 10, 2), ("0xg", 0, 1), ("zz", 0, 0), ("", 0, 0),
    ("1" + "0" * 16, None, 17),
])
def test_ids_read_as_strtoull_reads_them(text: str, value: int | None, end: int) -> None:
    from opensmtpd.filter.wire.smtpd_side import _strtoull
    assert _strtoull(text) == (value, end)
