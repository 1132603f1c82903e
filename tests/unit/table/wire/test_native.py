"""The native line protocol of smtpd >= 7.6 (table-protocols.md §3; table_proc.c rev 1.23)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opensmtpd.table.wire import native
from opensmtpd.table.wire.events import (
    Answer,
    Error,
    Found,
    Hello,
    Malformed,
    NotFound,
    Op,
    Open,
    Ready,
    Registered,
    Request,
    Updated,
)
from opensmtpd.table.wire.native import ProtocolViolation, TableSide, parse_reply, parse_request
from opensmtpd.table.wire.services import Service
from opensmtpd.wire import MAX_LINE

TS = "1715000000.123456"


def handshaken(table: str = "mytable") -> TableSide:
    side = TableSide()
    side.receive_data(native.handshake(table))
    event = side.next_event()
    assert isinstance(event, Hello)
    return side


def events(side: TableSide) -> list[object]:
    out: list[object] = []
    while (event := side.next_event()) is not None:
        out.append(event)
    return out


# --- requests ------------------------------------------------------------------------

def test_lookup_request_service_comes_before_id() -> None:
    event = parse_request(f"table|0.1|{TS}|mytable|lookup|alias|0a1b2c3d|root")
    assert event == Request(Op.LOOKUP, "0a1b2c3d", "mytable", Service.ALIAS, "root", "alias")


def test_check_request() -> None:
    event = parse_request(f"table|0.1|{TS}|t|check|netaddr|09da9614|127.0.0.1")
    assert event == Request(Op.CHECK, "09da9614", "t", Service.NETADDR, "127.0.0.1", "netaddr")


def test_fetch_request_has_no_key() -> None:
    event = parse_request(f"table|0.1|{TS}|t|fetch|source|2776439c")
    assert event == Request(Op.FETCH, "2776439c", "t", Service.SOURCE, None, "source")


def test_update_request() -> None:
    event = parse_request(f"table|0.1|{TS}|probe|update|4635748a")
    assert event == Request(Op.UPDATE, "4635748a", "probe")


@pytest.mark.parametrize("key", ["a|b@example.org", "|", "x||y|", "alice:pass|word"])
def test_key_is_the_rest_of_the_line_and_may_contain_pipes(key: str) -> None:
    event = parse_request(f"table|0.1|{TS}|t|check|auth|3b82c8c5|{key}")
    assert isinstance(event, Request)
    assert event.key == key
    assert event.id == "3b82c8c5"


def test_key_is_not_stripped() -> None:
    event = parse_request(f"table|0.1|{TS}|t|lookup|alias|0000000f| spaced ")
    assert isinstance(event, Request)
    assert event.key == " spaced "


def test_empty_key_is_kept() -> None:
    event = parse_request(f"table|0.1|{TS}|t|lookup|alias|0000000f|")
    assert isinstance(event, Request)
    assert event.key == ""


def test_id_is_opaque_and_echoed_verbatim() -> None:
    event = parse_request(f"table|0.1|{TS}|t|lookup|alias|00c0ffee|root")
    assert isinstance(event, Request)
    assert event.id == "00c0ffee"  # leading zeros kept: not parsed as a number
    assert (TableSide().send(Answer(event.op, event.id, Found("x")))
            == b"lookup-result|00c0ffee|found|x\n")


def test_unknown_service_name_is_kept_raw() -> None:
    event = parse_request(f"table|0.1|{TS}|t|lookup|bogus|0000000a|root")
    assert isinstance(event, Request)
    assert event.service is None
    assert event.raw_service == "bogus"
    assert event.id == "0000000a"


@pytest.mark.parametrize("line", [
    "garbage",
    "",
    "config|ready",
    f"tabl|0.1|{TS}|t|lookup|alias|0000000a|root",
    f"table|0.1|{TS}|t",
    f"table|0.1|{TS}|t|frobnicate|alias|0000000a|root",  # unknown op
    f"table|0.1|{TS}|t|LOOKUP|alias|0000000a|root",
])
def test_malformed_without_a_readable_id(line: str) -> None:
    event = parse_request(line)
    assert isinstance(event, Malformed)
    assert event.id is None


@pytest.mark.parametrize(("line", "op", "request_id"), [
    (f"table|0.1|{TS}|t|lookup|alias|0000000a", Op.LOOKUP, "0000000a"),  # no key
    (f"table|0.1|{TS}|t|check|alias|0000000b", Op.CHECK, "0000000b"),
    (f"table|0.1|{TS}|t|fetch|source|0000000c|extra", Op.FETCH, "0000000c"),
    (f"table|0.2|{TS}|t|lookup|alias|0000abcd|root", Op.LOOKUP, "0000abcd"),  # version
    (f"table|1.0|{TS}|t|update|0000abce", Op.UPDATE, "0000abce"),
])
def test_malformed_with_a_readable_id_keeps_it(line: str, op: Op, request_id: str) -> None:
    event = parse_request(line)
    assert isinstance(event, Malformed)
    assert event.id == request_id
    assert event.op is op


@pytest.mark.parametrize("line", [
    f"table|0.1|{TS}|t|update|0000000a|extra",
    f"table|0.1|{TS}|t|lookup|alias||root",
    f"table|0.1|{TS}|t|update|",
])
def test_malformed_field_counts_and_empty_ids(line: str) -> None:
    event = parse_request(line)
    assert isinstance(event, Malformed)
    assert event.id is None


# --- handshake -----------------------------------------------------------------------

def test_handshake_bytes_are_what_smtpd_writes() -> None:
    assert native.handshake("probe") == (
        b"config|smtpd-version|7.6.0-portable\n"
        b"config|protocol|0.1\n"
        b"config|tablename|probe\n"
        b"config|ready\n"
    )


def test_handshake_yields_hello_only_at_config_ready() -> None:
    side = TableSide()
    data = native.handshake("probe", "7.8.0-portable")
    for i in range(len(data) - 1):
        side.receive_data(data[i:i + 1])
        assert side.next_event() is None
    side.receive_data(data[-1:])
    hello = side.next_event()
    assert isinstance(hello, Hello)
    assert hello.table == "probe"
    assert hello.smtpd_version == "7.8.0-portable"
    assert ("protocol", "0.1") in hello.config
    assert side.ready
    assert side.table == "probe"
    assert side.next_event() is None


def test_unknown_config_lines_are_accepted() -> None:
    side = TableSide()
    side.receive_data(b"config|future-key|some|value\nconfig|tablename|t\nconfig|ready\n")
    hello = side.next_event()
    assert isinstance(hello, Hello)
    assert hello.table == "t"
    assert ("future-key", "some|value") in hello.config


def test_requests_after_handshake_in_the_same_read() -> None:
    side = TableSide()
    side.receive_data(native.handshake("t")
                      + native.request(Op.LOOKUP, "t", "0000000a", Service.ALIAS, "root")
                      + native.request(Op.UPDATE, "t", "0000000b"))
    got = events(side)
    assert isinstance(got[0], Hello)
    assert got[1] == Request(Op.LOOKUP, "0000000a", "t", Service.ALIAS, "root", "alias")
    assert got[2] == Request(Op.UPDATE, "0000000b", "t")
    assert len(got) == 3


def test_request_during_handshake_is_malformed() -> None:
    side = TableSide()
    side.receive_data(native.request(Op.LOOKUP, "t", "0000000a", Service.ALIAS, "root"))
    event = side.next_event()
    assert isinstance(event, Malformed)
    assert not side.ready


def test_registration_bytes() -> None:
    assert TableSide().send(Ready((Service.ALIAS, Service.DOMAIN))) == (
        b"register|alias\nregister|domain\nregister|ready\n")
    assert TableSide().send(Ready((Service.AUTH, Service.AUTH))) == (
        b"register|auth\nregister|ready\n")


def test_registering_nothing_is_refused() -> None:
    # smtpd: "no services registered" -> fatal (§3.2)
    with pytest.raises(ValueError):
        TableSide().send(Ready(()))


@pytest.mark.parametrize(("line", "expected"), [
    ("register|alias", Service.ALIAS),
    ("register|regex", Service.REGEX),
    ("register|auth", Service.AUTH),
    ("register|ready", None),
])
def test_parse_registration(line: str, expected: Service | None) -> None:
    assert native.parse_registration(line) is expected


@pytest.mark.parametrize("line", ["register|bogus", "register|none", "register|",
                                  "hello", "ready", "register|Alias"])
def test_parse_registration_violations(line: str) -> None:
    with pytest.raises(ProtocolViolation):
        native.parse_registration(line)


# --- replies (table side) --------------------------------------------------------------

@pytest.mark.parametrize(("op", "reply", "expected"), [
    (Op.CHECK, Found(), b"check-result|0a1b2c3d|found\n"),
    (Op.CHECK, Found("ignored"), b"check-result|0a1b2c3d|found\n"),
    (Op.CHECK, NotFound(), b"check-result|0a1b2c3d|not-found\n"),
    (Op.CHECK, Error("backend down"), b"check-result|0a1b2c3d|error|backend down\n"),
    (Op.LOOKUP, Found("gilles@poolp.org"), b"lookup-result|0a1b2c3d|found|gilles@poolp.org\n"),
    (Op.LOOKUP, Found("a|b"), b"lookup-result|0a1b2c3d|found|a|b\n"),
    (Op.LOOKUP, NotFound(), b"lookup-result|0a1b2c3d|not-found\n"),
    (Op.LOOKUP, Error("x"), b"lookup-result|0a1b2c3d|error|x\n"),
    # fetch-result, not the man page's lookup-result (§3.4)
    (Op.FETCH, Found("127.0.0.1"), b"fetch-result|0a1b2c3d|found|127.0.0.1\n"),
    (Op.FETCH, NotFound(), b"fetch-result|0a1b2c3d|not-found\n"),
    (Op.FETCH, Error("x"), b"fetch-result|0a1b2c3d|error|x\n"),
    (Op.UPDATE, Updated(), b"update-result|0a1b2c3d|ok\n"),
    (Op.UPDATE, Error("reload failed"), b"update-result|0a1b2c3d|error|reload failed\n"),
])
def test_reply_encoding(op: Op, reply: object, expected: bytes) -> None:
    assert TableSide().send(Answer(op, "0a1b2c3d", reply)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("op", "reply"), [
    (Op.LOOKUP, Found()),              # bare found on lookup is fatal in smtpd
    (Op.LOOKUP, Found("")),            # found| with an empty value is fatal
    (Op.LOOKUP, Found("a\nb")),        # would split the line
    (Op.FETCH, Found()),
    (Op.LOOKUP, Updated()),
    (Op.CHECK, Updated()),
    (Op.UPDATE, Found("x")),
    (Op.UPDATE, NotFound()),           # update not-found is fatal in smtpd
])
def test_reply_that_does_not_fit_becomes_an_error_line(op: Op, reply: object) -> None:
    data = TableSide().send(Answer(op, "0000000a", reply))  # type: ignore[arg-type]
    assert data.startswith(f"{op.value}-result|0000000a|error|".encode())
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert isinstance(parse_reply(op, "0000000a", data.decode().rstrip("\n")), Error)


def test_error_reason_is_flattened_to_one_line() -> None:
    data = TableSide().send(Answer(Op.LOOKUP, "0000000a", Error("line one\nline two\r\n\tthree")))
    assert data == b"lookup-result|0000000a|error|line one line two three\n"


def test_error_always_carries_a_message() -> None:
    # smtpd-tables(7): the message is mandatory
    data = TableSide().send(Answer(Op.CHECK, "0000000a", Error("")))
    assert data.startswith(b"check-result|0000000a|error|")
    assert len(data) > len(b"check-result|0000000a|error|\n")


# --- smtpd's judgement of replies (table_proc.c @ 7.6) --------------------------------

@pytest.mark.parametrize(("op", "rest", "expected"), [
    (Op.LOOKUP, "found|v", Found("v")),
    (Op.LOOKUP, "found|a|b", Found("a|b")),
    (Op.LOOKUP, "not-found", NotFound()),
    (Op.LOOKUP, "error", Error("")),
    (Op.LOOKUP, "error|boom", Error("boom")),
    (Op.LOOKUP, "errorX", Error("")),          # strncmp(r, "error", 5)
    (Op.FETCH, "found|127.0.0.1", Found("127.0.0.1")),
    (Op.FETCH, "error|x", Error("x")),
    (Op.CHECK, "found", Found()),
    (Op.CHECK, "found|extra-value", Found()),   # strncmp(r, "found", 5): accepted (E05)
    (Op.CHECK, "not-found", NotFound()),
    (Op.CHECK, "error|x", Error("x")),
    (Op.CHECK, "errorX", Error("")),           # E11
    (Op.UPDATE, "ok", Updated()),
    (Op.UPDATE, "error", Error("")),
    (Op.UPDATE, "error|reload failed", Error("reload failed")),
    (Op.UPDATE, "errorX", Error("")),          # strncmp(r, "error", 5) in update too
])
def test_parse_reply_accepts_what_smtpd_accepts(op: Op, rest: str, expected: object) -> None:
    assert parse_reply(op, "0a1b2c3d", f"{op.value}-result|0a1b2c3d|{rest}") == expected


@pytest.mark.parametrize(("op", "line"), [
    (Op.LOOKUP, "lookup-result|0a1b2c3d|found"),            # bare found (E12)
    (Op.LOOKUP, "lookup-result|0a1b2c3d|found|"),           # empty response (E04)
    (Op.LOOKUP, "lookup-result|0a1b2c3d|not-found|x"),      # not-found must be exact (E11)
    (Op.CHECK, "check-result|0a1b2c3d|not-found|x"),
    (Op.CHECK, "check-result|0a1b2c3d|yes"),
    (Op.LOOKUP, "lookup-result|deadbeef|found|v"),          # wrong id (E02)
    (Op.FETCH, "lookup-result|0a1b2c3d|found|127.0.0.1"),   # man page example (E03)
    (Op.LOOKUP, "lookup-result|0a1b2c3d"),
    (Op.LOOKUP, "table-result|0a1b2c3d|found|v"),           # the 2020 dialect
    (Op.LOOKUP, "garbage"),                                 # E01
    (Op.LOOKUP, ""),
    (Op.UPDATE, "update-result|0a1b2c3d|not-found"),        # fatal "failed parse reply"
    (Op.UPDATE, "update-result|0a1b2c3d|found"),
    (Op.UPDATE, "update-result|0a1b2c3d|updated"),
])
def test_parse_reply_violations(op: Op, line: str) -> None:
    with pytest.raises(ProtocolViolation):
        parse_reply(op, "0a1b2c3d", line)


def test_request_builder_matches_table_proc_send() -> None:
    assert native.request(Op.CHECK, "t", "0000000a", Service.MAILADDR, "a@b", TS) == (
        f"table|0.1|{TS}|t|check|mailaddr|0000000a|a@b\n".encode())
    assert native.request(Op.FETCH, "t", "0000000b", Service.SOURCE, timestamp=TS) == (
        f"table|0.1|{TS}|t|fetch|source|0000000b\n".encode())
    assert native.request(Op.UPDATE, "t", "0000000c", timestamp=TS) == (
        f"table|0.1|{TS}|t|update|0000000c\n".encode())


# --- framing -------------------------------------------------------------------------

def test_overlong_line_is_malformed_but_its_id_is_still_answered() -> None:
    side = handshaken("t")
    side.receive_data(f"table|0.1|{TS}|t|lookup|alias|0badf00d|".encode())
    for _ in range(8):
        side.receive_data(b"a" * (MAX_LINE // 4))
        assert side.next_event() is None
    side.receive_data(b"\n" + native.request(Op.LOOKUP, "t", "00000002", Service.ALIAS, "root"))
    event = side.next_event()
    assert isinstance(event, Malformed)
    assert event.id == "0badf00d"
    assert event.op is Op.LOOKUP
    # the stream is back in sync for the next request
    assert side.next_event() == Request(Op.LOOKUP, "00000002", "t", Service.ALIAS, "root",
                                        "alias")


def test_partial_line_waits_for_its_newline() -> None:
    side = handshaken("t")
    data = native.request(Op.LOOKUP, "t", "0000000a", Service.ALIAS, "root")
    side.receive_data(data[:-1])
    assert side.next_event() is None
    side.receive_data(data[-1:])
    assert isinstance(side.next_event(), Request)


# --- properties ----------------------------------------------------------------------

KEY_BYTES = st.binary(max_size=300).filter(lambda b: b"\n" not in b)
OPS_WITH_KEY = st.sampled_from([Op.CHECK, Op.LOOKUP])
SERVICES = st.sampled_from(list(Service))
IDS = st.integers(min_value=0, max_value=0xFFFFFFFF).map(lambda n: f"{n:08x}")


@given(raw=KEY_BYTES, op=OPS_WITH_KEY, service=SERVICES, request_id=IDS)
def test_any_key_round_trips_exactly(raw: bytes, op: Op, service: Service,
                                     request_id: str) -> None:
    key = raw.decode("utf-8", "surrogateescape")
    side = handshaken("tbl")
    side.receive_data(native.request(op, "tbl", request_id, service, key))
    event = side.next_event()
    assert isinstance(event, Request)
    assert event.key == key
    assert event.key.encode("utf-8", "surrogateescape") == raw
    assert (event.op, event.id, event.service, event.table) == (op, request_id, service, "tbl")


@given(op=st.sampled_from(list(Op)), request_id=IDS,
       reply=st.one_of(
           st.builds(Found, st.one_of(st.none(), st.text(max_size=50))),
           st.builds(NotFound), st.builds(Updated),
           st.builds(Error, st.text(max_size=50))))
def test_every_encoded_reply_is_one_line_smtpd_accepts(op: Op, request_id: str,
                                                       reply: object) -> None:
    data = TableSide().send(Answer(op, request_id, reply))  # type: ignore[arg-type]
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    judged = parse_reply(op, request_id, data[:-1].decode("utf-8", "surrogateescape"))
    if isinstance(reply, Found) and op is Op.LOOKUP and reply.value and "\n" not in reply.value:
        assert judged == reply
    if isinstance(reply, Error):
        assert isinstance(judged, Error)


# --- smtpd's end: SmtpdSide ------------------------------------------------------------

def smtpd_side(*services: str) -> native.SmtpdSide:
    """An SmtpdSide past the handshake, the table having registered ``services``."""
    side = native.SmtpdSide()
    assert side.send(Open("t", "7.9.0-portable")) == native.handshake("t", "7.9.0-portable")
    side.receive_data("".join(f"register|{s}\n" for s in services).encode()
                      + b"register|ready\n")
    assert side.next_event() == Registered(tuple(Service(s) for s in services))
    return side


def test_smtpd_side_handshake_in_pieces() -> None:
    side = native.SmtpdSide()
    side.send(Open("aliases"))
    for piece in (b"regis", b"ter|alias\nregister|dom", b"ain\nregister|rea"):
        side.receive_data(piece)
        assert side.next_event() is None
    side.receive_data(b"dy\n")
    assert side.next_event() == Registered((Service.ALIAS, Service.DOMAIN))


@pytest.mark.parametrize(("lines", "message"), [
    (b"register|ready\n", "no services registered"),
    (b"register|alias\nregistr|ready\n", "invalid handshake reply"),
    (b"register|none\n", "unknown service"),
    (b"lookup-result|00000001|found|x\n", "invalid handshake reply"),
])
def test_smtpd_side_handshake_violations(lines: bytes, message: str) -> None:
    side = native.SmtpdSide()
    side.send(Open("t"))
    side.receive_data(lines)
    with pytest.raises(ProtocolViolation, match=message):
        while side.next_event() is None:
            pass


def test_smtpd_side_sends_requests_as_smtpd_does() -> None:
    side = native.SmtpdSide(clock=lambda: 1700000000.5)
    smtpd = smtpd_side("alias")
    assert smtpd.send(Request(Op.LOOKUP, "0000000a", "t", Service.ALIAS, "root", "alias")) == (
        native.request(Op.LOOKUP, "t", "0000000a", Service.ALIAS, "root"))
    side.send(Open("t"))
    side.receive_data(b"register|alias\nregister|ready\n")
    side.next_event()
    assert side.send(Request(Op.FETCH, "0000000b", "t", Service.SOURCE)) == (
        b"table|0.1|1700000000.500000|t|fetch|source|0000000b\n")
    # a service no smtpd has goes out by its wire name (raw_service)
    assert side.send(Request(Op.LOOKUP, "0000000c", "t", None, "k", "nosuch")) == (
        b"table|0.1|1700000000.500000|t|lookup|nosuch|0000000c|k\n")


def test_smtpd_side_answers_in_the_order_sent() -> None:
    side = smtpd_side("alias", "domain")
    side.send(Request(Op.LOOKUP, "0000000a", "t", Service.ALIAS, "root"))
    side.send(Request(Op.CHECK, "0000000b", "t", Service.DOMAIN, "example.org"))
    side.receive_data(b"lookup-result|0000000a|found|gilles\ncheck-res")
    assert side.next_event() == Answer(Op.LOOKUP, "0000000a", Found("gilles"))
    assert side.next_event() is None
    side.receive_data(b"ult|0000000b|error|down\n")
    assert side.next_event() == Answer(Op.CHECK, "0000000b", Error("down"))
    assert side.next_event() is None


def test_smtpd_side_wrong_id_is_a_violation() -> None:
    side = smtpd_side("alias")
    side.send(Request(Op.LOOKUP, "0000000a", "t", Service.ALIAS, "root"))
    side.receive_data(b"lookup-result|0000000b|found|x\n")
    with pytest.raises(ProtocolViolation, match="failed to parse reply"):
        side.next_event()


def test_smtpd_side_reads_an_unsolicited_line_as_the_next_reply() -> None:
    """smtpd reads one line per request: a line sent while nothing was asked is what it
    reads for its next request, whose id it cannot carry (fatal then, not before)."""
    side = smtpd_side("alias")
    side.receive_data(b"lookup-result|0000000a|found|x\n")
    assert side.next_event() is None  # nothing asked: left for the next request
    side.send(Request(Op.LOOKUP, "0000000b", "t", Service.ALIAS, "root"))
    with pytest.raises(ProtocolViolation):
        side.next_event()


def test_smtpd_side_refuses_requests_before_registration() -> None:
    side = native.SmtpdSide()
    with pytest.raises(ValueError):
        side.send(Request(Op.UPDATE, "0000000a", "t"))
    side.send(Open("t"))
    with pytest.raises(ValueError):
        side.send(Request(Op.UPDATE, "0000000a", "t"))
    with pytest.raises(ValueError):
        side.send(Open("t"))


@pytest.mark.parametrize("reply", [Found("v@example.org"), NotFound(), Error("down"),
                                   Found("a\nb"), Updated()])
@pytest.mark.parametrize("op", list(Op))
def test_both_ends_round_trip(op: Op, reply: object) -> None:
    """The table's end answers what smtpd's end sent; smtpd's end reads what it meant
    (or an error, never a violation: the table's end only writes what smtpd parses)."""
    table, smtpd = TableSide(), native.SmtpdSide()
    table.receive_data(smtpd.send(Open("t")))
    hello = table.next_event()
    assert isinstance(hello, Hello)
    smtpd.receive_data(table.send(Ready((Service.ALIAS,))))
    assert smtpd.next_event() == Registered((Service.ALIAS,))
    key = "root" if op in (Op.CHECK, Op.LOOKUP) else None
    service = Service.ALIAS if op is not Op.UPDATE else None
    table.receive_data(smtpd.send(Request(op, "0000000a", "t", service, key,
                                          "alias" if service else "")))
    request = table.next_event()
    assert isinstance(request, Request) and request.key == key
    smtpd.receive_data(table.send(Answer(request.op, request.id,
                                         reply)))  # type: ignore[arg-type]
    answer = smtpd.next_event()
    assert isinstance(answer, Answer) and answer.id == "0000000a"
    fits = {Op.UPDATE: (Updated,), Op.CHECK: (Found, NotFound), Op.LOOKUP: (Found, NotFound),
            Op.FETCH: (Found, NotFound)}[op]
    unwritable = reply == Found("a\nb") and op is not Op.CHECK  # a value with a newline
    if isinstance(reply, Error) or not isinstance(reply, fits) or unwritable:
        assert isinstance(answer.reply, Error)
    elif op is Op.CHECK and isinstance(reply, Found):
        assert answer.reply == Found()
    else:
        assert answer.reply == reply


def test_table_side_send_refuses_other_events() -> None:
    with pytest.raises(TypeError):
        TableSide().send(Open("t"))  # type: ignore[arg-type]
