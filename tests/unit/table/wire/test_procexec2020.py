"""The 2020 table-procexec dialect (table-protocols.md §2 and §4)."""

from __future__ import annotations

import pytest

from opensmtpd.table.wire import procexec2020
from opensmtpd.table.wire.events import (
    Answer,
    Error,
    Found,
    Malformed,
    NotFound,
    Op,
    Open,
    Ready,
    Registered,
    Request,
    Updated,
)
from opensmtpd.table.wire.procexec2020 import TableSide, parse_reply, parse_request
from opensmtpd.table.wire.services import Service

TS = "1590480000.123456"
ID = "0000002a5f3c9e11"


# --- requests: table-procexec @93055be9 (no table name) --------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    (f"table|0.1|{TS}|lookup|{ID}|alias|root",
     Request(Op.LOOKUP, ID, "", Service.ALIAS, "root", "alias")),
    (f"table|0.1|{TS}|check|{ID}|mailaddr|gilles@poolp.org",
     Request(Op.CHECK, ID, "", Service.MAILADDR, "gilles@poolp.org", "mailaddr")),
    (f"table|0.1|{TS}|fetch|{ID}|source",
     Request(Op.FETCH, ID, "", Service.SOURCE, None, "source")),
    (f"table|0.1|{TS}|update|{ID}", Request(Op.UPDATE, ID, "")),
])
def test_procexec_shape_op_then_id_then_service(line: str, expected: Request) -> None:
    assert parse_request(line) == expected


# --- requests: py/go-opensmtpd HEAD (table name before the op) --------------------------

@pytest.mark.parametrize(("line", "expected"), [
    (f"table|0.1|{TS}|mytable|lookup|{ID}|alias|root",
     Request(Op.LOOKUP, ID, "mytable", Service.ALIAS, "root", "alias")),
    (f"table|0.1|{TS}|mytable|check|{ID}|domain|example.org",
     Request(Op.CHECK, ID, "mytable", Service.DOMAIN, "example.org", "domain")),
    (f"table|0.1|{TS}|mytable|fetch|{ID}|relayhost",
     Request(Op.FETCH, ID, "mytable", Service.RELAYHOST, None, "relayhost")),
    (f"table|0.1|{TS}|mytable|update|{ID}", Request(Op.UPDATE, ID, "mytable")),
])
def test_head_shape_with_table_name(line: str, expected: Request) -> None:
    assert parse_request(line) == expected


def test_table_named_like_an_op() -> None:
    """A table called "check": field 4 decides (an op in the named form, the hex id in the
    unnamed one)."""
    assert parse_request(f"table|0.1|{TS}|check|lookup|{ID}|alias|root") == Request(
        Op.LOOKUP, ID, "check", Service.ALIAS, "root", "alias")
    assert parse_request(f"table|0.1|{TS}|update|update|{ID}") == Request(
        Op.UPDATE, ID, "update")
    assert parse_request(f"table|0.1|{TS}|check|{ID}|alias|root") == Request(
        Op.CHECK, ID, "", Service.ALIAS, "root", "alias")


def test_key_with_pipes_is_rejoined() -> None:
    event = parse_request(f"table|0.1|{TS}|check|{ID}|mailaddr|a|b@example.org")
    assert isinstance(event, Request)
    assert event.key == "a|b@example.org"
    event = parse_request(f"table|0.1|{TS}|t|check|{ID}|mailaddr|a|b@example.org")
    assert isinstance(event, Request)
    assert (event.table, event.key) == ("t", "a|b@example.org")


def test_unknown_service_is_kept_raw() -> None:
    event = parse_request(f"table|0.1|{TS}|lookup|{ID}|bogus|root")
    assert isinstance(event, Request)
    assert event.service is None
    assert event.raw_service == "bogus"


@pytest.mark.parametrize("line", [
    "garbage",
    f"table|0.1|{TS}|update",
    f"table|0.1|{TS}|frobnicate|{ID}|alias|root",
    f"table|0.1|{TS}|lookup||alias|root",
])
def test_malformed_without_id(line: str) -> None:
    event = parse_request(line)
    assert isinstance(event, Malformed)
    assert event.id is None


@pytest.mark.parametrize(("line", "op"), [
    (f"table|0.2|{TS}|lookup|{ID}|alias|root", Op.LOOKUP),   # wrong version
    (f"table|0.1|{TS}|lookup|{ID}|alias", Op.LOOKUP),        # no key
    (f"table|0.1|{TS}|check|{ID}", Op.CHECK),                # no service
])
def test_malformed_with_id(line: str, op: Op) -> None:
    event = parse_request(line)
    assert isinstance(event, Malformed)
    assert (event.id, event.op) == (ID, op)


def test_request_builder_named_is_the_article_shape() -> None:
    """The article: table|0.1|1590631921.2944137|table-name|check|deadbeefdeadbeef|mailaddr|…"""
    assert procexec2020.request(Op.CHECK, "deadbeefdeadbeef", Service.MAILADDR,
                                "gilles@poolp.org", "1590631921.2944137", table="table-name") == (
        b"table|0.1|1590631921.2944137|table-name|check|deadbeefdeadbeef|mailaddr|"
        b"gilles@poolp.org\n")
    assert procexec2020.request(Op.FETCH, ID, Service.SOURCE, timestamp=TS, table="t") == (
        f"table|0.1|{TS}|t|fetch|{ID}|source\n".encode())
    assert procexec2020.request(Op.UPDATE, ID, timestamp=TS, table="t") == (
        f"table|0.1|{TS}|t|update|{ID}\n".encode())
    # and the table side reads back what it was sent
    line = procexec2020.request(Op.LOOKUP, ID, Service.ALIAS, "a|b", TS, table="t")
    assert parse_request(line.decode()[:-1]) == Request(
        Op.LOOKUP, ID, "t", Service.ALIAS, "a|b", "alias")


def test_request_builder_is_the_procexec_shape() -> None:
    assert procexec2020.request(Op.LOOKUP, ID, Service.ALIAS, "root", TS) == (
        f"table|0.1|{TS}|lookup|{ID}|alias|root\n".encode())
    assert procexec2020.request(Op.FETCH, ID, Service.SOURCE, timestamp=TS) == (
        f"table|0.1|{TS}|fetch|{ID}|source\n".encode())
    assert procexec2020.request(Op.UPDATE, ID, timestamp=TS) == (
        f"table|0.1|{TS}|update|{ID}\n".encode())


# --- replies (§2 response lines, §4.2) ---------------------------------------------------

@pytest.mark.parametrize(("op", "reply", "expected"), [
    (Op.CHECK, Found(), f"table-result|{ID}|found\n"),
    (Op.CHECK, NotFound(), f"table-result|{ID}|not-found\n"),
    (Op.LOOKUP, Found("gilles@poolp.org"), f"table-result|{ID}|found|gilles@poolp.org\n"),
    (Op.LOOKUP, NotFound(), f"table-result|{ID}|not-found\n"),
    (Op.FETCH, Found("127.0.0.1"), f"table-result|{ID}|found|127.0.0.1\n"),
    (Op.LOOKUP, Error("anything"), f"table-result|{ID}|failure\n"),
    (Op.CHECK, Error("anything"), f"table-result|{ID}|failure\n"),
    (Op.UPDATE, Updated(), f"table-result|{ID}|updated\n"),
    (Op.UPDATE, Error("x"), f"table-result|{ID}|failure\n"),
    # replies that do not fit their op are failures, never a wrong success
    (Op.UPDATE, NotFound(), f"table-result|{ID}|failure\n"),
    (Op.LOOKUP, Updated(), f"table-result|{ID}|failure\n"),
    (Op.LOOKUP, Found(), f"table-result|{ID}|failure\n"),
    (Op.LOOKUP, Found("a\nb"), f"table-result|{ID}|failure\n"),
])
def test_reply_encoding(op: Op, reply: object, expected: str) -> None:
    assert TableSide().send(Answer(op, ID, reply)) == expected.encode()  # type: ignore[arg-type]


@pytest.mark.parametrize(("op", "rest", "expected"), [
    (Op.UPDATE, "updated", Updated()),
    (Op.CHECK, "found", Found()),
    (Op.CHECK, "not-found", NotFound()),
    (Op.LOOKUP, "found|v", Found("v")),
    (Op.FETCH, "found|127.0.0.1", Found("127.0.0.1")),
    (Op.LOOKUP, "not-found", NotFound()),
])
def test_parse_reply(op: Op, rest: str, expected: object) -> None:
    assert parse_reply(op, ID, f"table-result|{ID}|{rest}") == expected
    # the article writes table-response|…: read the same way
    assert parse_reply(op, ID, f"table-response|{ID}|{rest}") == expected


@pytest.mark.parametrize(("op", "line"), [
    (Op.LOOKUP, f"table-result|{ID}|failure"),
    (Op.LOOKUP, f"table-result|{'f' * 16}|found|v"),     # id mismatch
    (Op.LOOKUP, f"lookup-result|{ID}|found|v"),          # not the 2020 prefix
    (Op.LOOKUP, f"table-responses|{ID}|found|v"),
    (Op.LOOKUP, f"table-response|{'f' * 16}|found|v"),  # id mismatch
    (Op.LOOKUP, f"table-result|{ID}|found"),             # no value on lookup
    (Op.UPDATE, f"table-result|{ID}|not-found"),
    (Op.LOOKUP, "garbage"),
])
def test_parse_reply_failures(op: Op, line: str) -> None:
    # procexec maps anything unexpected to -1; it never exits
    assert isinstance(parse_reply(op, ID, line), Error)


def test_stream_split_and_coalesced() -> None:
    side = TableSide()
    data = (procexec2020.request(Op.LOOKUP, ID, Service.ALIAS, "root")
            + procexec2020.request(Op.UPDATE, "00000000000000ff"))
    side.receive_data(data[:10])
    assert side.next_event() is None
    side.receive_data(data[10:])
    first, second = side.next_event(), side.next_event()
    assert first == Request(Op.LOOKUP, ID, "", Service.ALIAS, "root", "alias")
    assert second == Request(Op.UPDATE, "00000000000000ff", "")
    assert side.next_event() is None


# --- smtpd's end: SmtpdSide ------------------------------------------------------------

def test_smtpd_side_has_no_handshake() -> None:
    side = procexec2020.SmtpdSide()
    assert side.next_event() is None
    assert side.send(Open("t")) == b""
    assert side.next_event() == Registered(())
    assert side.next_event() is None


@pytest.mark.parametrize(("form", "expected"), [
    ("named", f"table|0.1|{TS}|aliases|lookup|{ID}|alias|root\n"),
    ("unnamed", f"table|0.1|{TS}|lookup|{ID}|alias|root\n"),
])
def test_smtpd_side_forms(form: str, expected: str) -> None:
    side = procexec2020.SmtpdSide(form, clock=lambda: float(TS))
    side.send(Open("aliases"))
    request = Request(Op.LOOKUP, ID, "aliases", Service.ALIAS, "root", "alias")
    assert side.send(request) == expected.encode()
    table = TableSide()
    table.receive_data(expected.encode())
    assert table.next_event() == (request if form == "named"
                                  else Request(Op.LOOKUP, ID, "", Service.ALIAS, "root", "alias"))


def test_smtpd_side_unknown_form() -> None:
    with pytest.raises(ValueError):
        procexec2020.SmtpdSide("sideways")


def test_smtpd_side_judges_as_procexec_did() -> None:
    """Anything unexpected is an error reply (-1 to smtpd), never an exception."""
    side = procexec2020.SmtpdSide()
    side.send(Request(Op.LOOKUP, ID, "t", Service.ALIAS, "root", "alias"))
    side.send(Request(Op.LOOKUP, "00000000000000ff", "t", Service.ALIAS, "root", "alias"))
    side.send(Request(Op.UPDATE, "00000000000000fe", "t"))
    side.receive_data(f"table-result|{ID}|found|gilles\n".encode()
                      + b"table-result|0000000000000000|found|x\n"  # another id
                      + b"table-result|00000000000000fe|updat")
    assert side.next_event() == Answer(Op.LOOKUP, ID, Found("gilles"))
    answer = side.next_event()
    assert isinstance(answer, Answer) and isinstance(answer.reply, Error)
    assert answer.id == "00000000000000ff"
    assert side.next_event() is None
    side.receive_data(b"ed\n")
    assert side.next_event() == Answer(Op.UPDATE, "00000000000000fe", Updated())


def test_smtpd_side_keeps_an_early_line_for_the_next_request() -> None:
    side = procexec2020.SmtpdSide()
    side.receive_data(f"table-result|{ID}|not-found\n".encode())
    assert side.next_event() is None
    side.send(Request(Op.CHECK, ID, "t", Service.DOMAIN, "x", "domain"))
    assert side.next_event() == Answer(Op.CHECK, ID, NotFound())


def test_table_side_sends_nothing_for_ready() -> None:
    assert TableSide().send(Ready((Service.ALIAS,))) == b""
