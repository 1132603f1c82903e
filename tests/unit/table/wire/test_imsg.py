"""The binary imsg protocol of smtpd <= 7.5 (table-protocols.md §1.2-§1.8)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opensmtpd.table.wire import imsg
from opensmtpd.table.wire.events import (
    Answer,
    Error,
    Found,
    Hello,
    Ignored,
    Malformed,
    NotFound,
    Op,
    Open,
    Ready,
    Registered,
    Request,
    Updated,
)
from opensmtpd.table.wire.imsg import ProtocolViolation, TableSide, parse_reply
from opensmtpd.table.wire.services import Service

PID = 0x28C1  # the pid of the §1.8 probe transcript


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def split(message: bytes) -> tuple[int, int, int, int, int, bytes]:
    msg_type, length, flags, peerid, pid = struct.unpack("<IHHII", message[:16])
    assert length == len(message)
    return msg_type, length, flags, peerid, pid, message[16:]


def opened(table: str = "mytable") -> TableSide:
    side = TableSide(pid=4242)
    side.receive_data(imsg.open_request(table))
    assert side.next_event() == Hello(table)
    return side


# --- constants and layout ------------------------------------------------------------

def test_header_is_packed_host_order_16_bytes() -> None:
    assert imsg.HEADER.format == "=IHHII"
    assert imsg.HEADER.size == 16
    assert imsg.message(imsg.PROC_TABLE_OK, b"", 0x1234) == hx(
        "00000000 1000 0000 00000000 34120000")


def test_message_types() -> None:
    # smtpd-api.h: OK, FAIL, OPEN, CLOSE, UPDATE, CHECK, LOOKUP, FETCH
    assert (imsg.PROC_TABLE_OK, imsg.PROC_TABLE_FAIL, imsg.PROC_TABLE_OPEN,
            imsg.PROC_TABLE_CLOSE, imsg.PROC_TABLE_UPDATE, imsg.PROC_TABLE_CHECK,
            imsg.PROC_TABLE_LOOKUP, imsg.PROC_TABLE_FETCH) == (0, 1, 2, 3, 4, 5, 6, 7)
    assert imsg.API_VERSION == 2


def test_open_request_matches_the_probe_transcript() -> None:
    data = imsg.open_request("mytable", pid=PID)
    assert data.startswith(hx("02000000 1408 0000 00000000 c1280000 02000000 6d797461626c65 00"))
    assert len(data) == 16 + 2052
    _, _, _, _, _, payload = split(data)
    assert len(payload) == 2052
    assert struct.unpack_from("<I", payload)[0] == 2
    assert payload[4:] == b"mytable".ljust(2048, b"\0")


def test_update_request_matches_the_probe_transcript() -> None:
    assert imsg.request(Op.UPDATE, pid=PID) == hx("04000000 1000 0000 00000000 c1280000")


def test_check_request_matches_the_probe_transcript() -> None:
    # =iQ (service, params count 0), key, NUL: 12 + len + 1 bytes, no padding
    assert imsg.request(Op.CHECK, Service.USERINFO, "alice", pid=PID) == hx(
        "05000000 2200 0000 00000000 c1280000 10000000 0000000000000000 616c69636500")


def test_lookup_payload_size() -> None:
    key = "gilles@poolp.org"
    data = imsg.request(Op.LOOKUP, Service.ALIAS, key)
    msg_type, _, _, _, _, payload = split(data)
    assert msg_type == imsg.PROC_TABLE_LOOKUP
    assert len(payload) == 12 + len(key) + 1
    assert payload == struct.pack("<iQ", 0x1, 0) + key.encode() + b"\0"


def test_fetch_request_matches_the_probe_transcript() -> None:
    data = imsg.request(Op.FETCH, Service.SOURCE, pid=PID)
    assert data == hx("07000000 1c00 0000 00000000 c1280000 20000000 0000000000000000")
    assert len(split(data)[5]) == 12


# --- table side: requests ------------------------------------------------------------

def test_open_gives_hello_with_the_table_name() -> None:
    side = TableSide()
    side.receive_data(imsg.open_request("virtuals"))
    assert side.next_event() == Hello("virtuals")
    assert side.table == "virtuals"


def test_requests_are_decoded() -> None:
    side = opened("mytable")
    side.receive_data(imsg.request(Op.CHECK, Service.USERINFO, "alice")
                      + imsg.request(Op.LOOKUP, Service.CREDENTIALS, "bob")
                      + imsg.request(Op.FETCH, Service.SOURCE)
                      + imsg.request(Op.UPDATE)
                      + imsg.message(imsg.PROC_TABLE_CLOSE, b"", 0))
    check, lookup, fetch, update, close = (side.next_event() for _ in range(5))
    assert isinstance(check, Request) and isinstance(lookup, Request)
    assert isinstance(fetch, Request) and isinstance(update, Request)
    assert (check.op, check.service, check.key, check.table) == (
        Op.CHECK, Service.USERINFO, "alice", "mytable")
    assert check.raw_service == "0x10"
    assert (lookup.op, lookup.service, lookup.key) == (Op.LOOKUP, Service.CREDENTIALS, "bob")
    assert (fetch.op, fetch.service, fetch.key) == (Op.FETCH, Service.SOURCE, None)
    assert (update.op, update.service, update.key) == (Op.UPDATE, None, None)
    assert isinstance(close, Ignored)
    # imsg has no ids: each request gets a distinct local one
    assert len({check.id, lookup.id, fetch.id, update.id}) == 4
    assert side.next_event() is None


def test_unknown_service_code_is_a_request_without_service() -> None:
    side = opened()
    side.receive_data(imsg.request(Op.LOOKUP, key="root", service_code=0x4000))
    event = side.next_event()
    assert isinstance(event, Request)
    assert event.service is None
    assert event.raw_service == "0x4000"


def test_params_pairs_are_skipped() -> None:
    # extras table_read_params: count pairs of key\0value\0 before the key
    side = opened()
    payload = struct.pack("<iQ", 0x1, 2) + b"k1\0v1\0k2\0v2\0" + b"root\0"
    side.receive_data(imsg.message(imsg.PROC_TABLE_LOOKUP, payload, 0))
    event = side.next_event()
    assert isinstance(event, Request)
    assert event.key == "root"


@pytest.mark.parametrize("payload", [
    struct.pack("<iQ", 0x1, 0) + b"root",           # not NUL-terminated
    struct.pack("<iQ", 0x1, 0) + b"\0",             # empty key
    struct.pack("<iQ", 0x1, 0),                     # no key at all
    struct.pack("<iQ", 0x1, 0) + b"ro\0ot\0",       # NUL inside the key
    struct.pack("<i", 0x1),                         # too short for =iQ
    struct.pack("<iQ", 0x1, 1) + b"k\0",            # truncated params
])
def test_bad_lookup_payloads_are_malformed_but_answerable(payload: bytes) -> None:
    side = opened()
    side.receive_data(imsg.message(imsg.PROC_TABLE_LOOKUP, payload, 0))
    event = side.next_event()
    assert isinstance(event, Malformed)
    assert event.op is Op.LOOKUP and event.id is not None  # smtpd waits: answer -1


def test_update_with_payload_is_malformed() -> None:
    side = opened()
    side.receive_data(imsg.message(imsg.PROC_TABLE_UPDATE, b"xx", 0))
    event = side.next_event()
    assert isinstance(event, Malformed) and event.op is Op.UPDATE


def test_unknown_message_type_is_malformed() -> None:
    side = opened()
    side.receive_data(imsg.message(99, b"", 0))
    assert isinstance(side.next_event(), Malformed)


@pytest.mark.parametrize("version", [1, 3, 0])
def test_wrong_api_version_is_malformed(version: int) -> None:
    side = TableSide()
    side.receive_data(imsg.open_request("t", version=version))
    event = side.next_event()
    assert isinstance(event, Malformed)
    assert "version" in event.reason


@pytest.mark.parametrize("size", [0, 2051, 2053])
def test_open_payload_must_be_2052_bytes(size: int) -> None:
    side = TableSide()
    payload = (struct.pack("<I", 2) + b"t").ljust(size, b"\0")[:size]
    side.receive_data(imsg.message(imsg.PROC_TABLE_OPEN, payload, 0))
    assert isinstance(side.next_event(), Malformed)


@pytest.mark.parametrize("length", [0, 15, 16385, 65535])
def test_impossible_length_is_malformed(length: int) -> None:
    side = TableSide()
    side.receive_data(struct.pack("<IHHII", imsg.PROC_TABLE_UPDATE, length, 0, 0, 0) + b"\0" * 64)
    assert isinstance(side.next_event(), Malformed)


def test_largest_legal_message_is_accepted() -> None:
    side = opened()
    key = "k" * (imsg.MAX_PAYLOAD - 12 - 1)
    data = imsg.request(Op.LOOKUP, Service.ALIAS, key)
    assert len(data) == imsg.MAX_IMSGSIZE == 16384
    side.receive_data(data)
    event = side.next_event()
    assert isinstance(event, Request) and event.key == key


# --- stream reassembly -----------------------------------------------------------------

STREAM = (imsg.open_request("t") + imsg.request(Op.CHECK, Service.DOMAIN, "example.org")
          + imsg.request(Op.LOOKUP, Service.ALIAS, "root") + imsg.request(Op.FETCH, Service.SOURCE)
          + imsg.request(Op.UPDATE))


def drain(side: TableSide) -> list[object]:
    out: list[object] = []
    while (event := side.next_event()) is not None:
        out.append(event)
    return out


def test_byte_by_byte_and_all_at_once_give_the_same_events() -> None:
    side = TableSide()
    got: list[object] = []
    for byte in range(len(STREAM)):
        side.receive_data(STREAM[byte:byte + 1])
        got.extend(drain(side))
    whole = TableSide()
    whole.receive_data(STREAM)  # several messages in one read
    expected = drain(whole)
    assert len(expected) == 5
    assert got == expected
    assert isinstance(expected[2], Request) and expected[2].key == "root"


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=8))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    whole = TableSide()
    whole.receive_data(STREAM)
    expected = drain(whole)
    side = TableSide()
    got: list[object] = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for lo, hi in itertools.pairwise(bounds):
        side.receive_data(STREAM[lo:hi])
        got.extend(drain(side))
    assert got == expected
    assert [type(e) for e in got] == [Hello, Request, Request, Request, Request]


def test_framer_waits_for_the_whole_message() -> None:
    framer = imsg.Framer()
    data = imsg.request(Op.LOOKUP, Service.ALIAS, "root")
    framer.feed(data[:15])
    assert framer.next_message() is None
    framer.feed(data[15:-1])
    assert framer.next_message() is None
    framer.feed(data[-1:] + data)
    assert framer.next_message() == (imsg.PROC_TABLE_LOOKUP, data[16:])
    assert framer.next_message() == (imsg.PROC_TABLE_LOOKUP, data[16:])
    assert framer.next_message() is None


# --- table side: replies (§1.6) ---------------------------------------------------------

def payload_of(data: bytes, pid: int = 4242) -> bytes:
    msg_type, _, flags, peerid, sender, payload = split(data)
    assert (msg_type, flags, peerid, sender) == (imsg.PROC_TABLE_OK, 0, 0, pid)
    return payload


def r(value: int) -> bytes:
    return struct.pack("<i", value)


def test_open_ack_is_an_empty_ok() -> None:
    assert payload_of(opened().send(Ready())) == b""


@pytest.mark.parametrize(("op", "reply", "payload"), [
    (Op.UPDATE, Updated(), r(1)),
    (Op.UPDATE, Error("x"), r(-1)),
    (Op.UPDATE, NotFound(), r(-1)),
    (Op.CHECK, Found(), r(1)),
    (Op.CHECK, Found("dropped"), r(1)),           # CHECK replies are exactly 4 bytes
    (Op.CHECK, NotFound(), r(0)),
    (Op.CHECK, Error("x"), r(-1)),
    (Op.CHECK, Updated(), r(-1)),
    (Op.LOOKUP, Found("1000:1000:/home/alice"), r(1) + b"1000:1000:/home/alice\0"),
    (Op.LOOKUP, NotFound(), r(0)),
    (Op.LOOKUP, Error("x"), r(-1)),
    (Op.LOOKUP, Found(), r(-1)),                  # r=1 with no string is fatal in smtpd
    (Op.LOOKUP, Found(""), r(-1)),                # an empty value smtpd cannot use
    (Op.LOOKUP, Found("a\0b"), r(-1)),            # would be cut by strdup()
    (Op.FETCH, Found("127.0.0.1"), r(1) + b"127.0.0.1\0"),
    (Op.FETCH, NotFound(), r(0)),
    (Op.FETCH, Error("x"), r(-1)),
])
def test_reply_payloads(op: Op, reply: object, payload: bytes) -> None:
    assert payload_of(opened().send(Answer(op, "1", reply))) == payload  # type: ignore[arg-type]


def test_lookup_reply_matches_the_probe_transcript_length() -> None:
    data = opened().send(Answer(Op.LOOKUP, "1", Found("1000:1000:/home/alice")))
    assert len(data) == 42  # "<< type=0 len=42 data=01000000 "1000:1000:/home/alice\0""


def test_replies_carry_the_current_pid() -> None:
    side = TableSide(pid=1)
    for pid in (1, 2):
        side.pid = pid
        assert split(side.send(Answer(Op.LOOKUP, "1", Found("v"))))[4] == pid
        assert split(side.send(Answer(Op.CHECK, "1", NotFound())))[4] == pid


def test_value_up_to_the_frame_limit() -> None:
    side = opened()
    longest = "v" * 16363  # 16384 - 16 header - 4 r - 1 NUL
    data = side.send(Answer(Op.LOOKUP, "1", Found(longest)))
    assert len(data) == 16384
    assert payload_of(data) == r(1) + longest.encode() + b"\0"
    assert payload_of(side.send(Answer(Op.LOOKUP, "1", Found(longest + "v")))) == r(-1)
    # counted in bytes: 8182 two-byte characters are 16364 bytes
    assert payload_of(side.send(Answer(Op.FETCH, "1", Found("é" * 8182)))) == r(-1)


# --- smtpd side: table_proc.c @ 6.8 -----------------------------------------------------

@pytest.mark.parametrize(("op", "payload", "expected"), [
    (None, b"", None),
    (Op.UPDATE, r(1), Updated()),
    (Op.UPDATE, r(0), Error("update returned 0")),
    (Op.CHECK, r(1), Found()),
    (Op.CHECK, r(0), NotFound()),
    (Op.LOOKUP, r(1) + b"v\0", Found("v")),
    (Op.LOOKUP, r(1) + b"abc\0def\0", Found("abc")),  # last byte NUL: strdup stops early
    (Op.LOOKUP, r(0), NotFound()),
    (Op.FETCH, r(1) + b"127.0.0.1\0", Found("127.0.0.1")),
])
def test_parse_reply_accepts(op: Op | None, payload: bytes, expected: object) -> None:
    assert parse_reply(op, imsg.PROC_TABLE_OK, payload) == expected


@pytest.mark.parametrize("op", [Op.UPDATE, Op.CHECK, Op.LOOKUP, Op.FETCH])
def test_parse_reply_minus_one_is_a_failure(op: Op) -> None:
    assert isinstance(parse_reply(op, imsg.PROC_TABLE_OK, r(-1)), Error)


@pytest.mark.parametrize(("op", "msg_type", "payload"), [
    (Op.LOOKUP, imsg.PROC_TABLE_FAIL, r(-1)),       # "bad response": any non-OK type
    (None, imsg.PROC_TABLE_FAIL, b""),
    (Op.CHECK, 7, r(1)),
    (None, imsg.PROC_TABLE_OK, b"\0"),               # OPEN ack must be empty
    (Op.UPDATE, imsg.PROC_TABLE_OK, r(1) + b"\0"),   # bogus data
    (Op.CHECK, imsg.PROC_TABLE_OK, r(1) + b"x\0"),   # bogus data
    (Op.CHECK, imsg.PROC_TABLE_OK, b"\1\0"),         # bad msg len
    (Op.LOOKUP, imsg.PROC_TABLE_OK, b""),            # bad msg len (empty response)
    (Op.LOOKUP, imsg.PROC_TABLE_OK, r(1)),           # empty response
    (Op.LOOKUP, imsg.PROC_TABLE_OK, r(1) + b"v"),    # not NUL-terminated
    (Op.FETCH, imsg.PROC_TABLE_OK, r(1) + b"v\0x"),  # not NUL-terminated
    (Op.LOOKUP, imsg.PROC_TABLE_OK, r(0) + b"v\0"),  # bogus data after r != 1
    (Op.LOOKUP, imsg.PROC_TABLE_OK, r(-1) + b"v\0"),
])
def test_parse_reply_violations(op: Op | None, msg_type: int, payload: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_reply(op, msg_type, payload)


@given(op=st.sampled_from(list(Op)),
       reply=st.one_of(
           st.builds(Found, st.one_of(st.none(), st.text(max_size=40))),
           st.builds(NotFound), st.builds(Updated), st.builds(Error, st.text(max_size=20))))
def test_every_encoded_reply_is_accepted_by_smtpd(op: Op, reply: object) -> None:
    side = TableSide(pid=1)
    msg_type, payload = _one(side.send(Answer(op, "1", reply)))  # type: ignore[arg-type]
    judged = parse_reply(op, msg_type, payload)
    if isinstance(reply, Error):
        assert isinstance(judged, Error)
    if isinstance(reply, Found) and op is Op.LOOKUP and reply.value and "\0" not in reply.value:
        assert judged == reply


def _one(data: bytes) -> tuple[int, bytes]:
    framer = imsg.Framer()
    framer.feed(data)
    msg = framer.next_message()
    assert msg is not None and framer.next_message() is None
    return msg


# --- smtpd's end: SmtpdSide ------------------------------------------------------------

def smtpd_side() -> imsg.SmtpdSide:
    side = imsg.SmtpdSide(pid=PID)
    assert side.send(Open("t")) == imsg.open_request("t", PID)
    side.receive_data(imsg.message(imsg.PROC_TABLE_OK, b"", 1))
    assert side.next_event() == Registered(())
    return side


def test_smtpd_side_open_acknowledged_in_pieces() -> None:
    side = imsg.SmtpdSide()
    side.send(Open("t"))
    ack = imsg.message(imsg.PROC_TABLE_OK, b"", 1)
    side.receive_data(ack[:7])
    assert side.next_event() is None
    side.receive_data(ack[7:])
    assert side.next_event() == Registered(())


@pytest.mark.parametrize(("ack", "message"), [
    (imsg.message(imsg.PROC_TABLE_OK, b"x", 1), "bogus data"),
    (imsg.message(imsg.PROC_TABLE_FAIL, b"", 1), "bad response type"),
    (imsg.HEADER.pack(imsg.PROC_TABLE_OK, 20000, 0, 0, 1), "length"),  # imsg_get fails
])
def test_smtpd_side_open_violations(ack: bytes, message: str) -> None:
    side = imsg.SmtpdSide()
    side.send(Open("t"))
    side.receive_data(ack)
    with pytest.raises(ProtocolViolation, match=message):
        side.next_event()


def test_smtpd_side_answers_carry_the_ids_of_the_requests_in_order() -> None:
    """imsg has no ids: each reply answers the oldest request, whose id the Answer carries."""
    side = smtpd_side()
    assert side.send(Request(Op.LOOKUP, "7", "t", Service.USERINFO, "alice", "userinfo")) == (
        imsg.request(Op.LOOKUP, Service.USERINFO, "alice", PID))
    side.send(Request(Op.UPDATE, "8", "t"))
    value = b"1000:1000:/home/alice\0"
    side.receive_data(imsg.message(imsg.PROC_TABLE_OK, imsg.RESULT.pack(1) + value, 1)
                      + imsg.message(imsg.PROC_TABLE_OK, imsg.RESULT.pack(1), 1))
    assert side.next_event() == Answer(Op.LOOKUP, "7", Found("1000:1000:/home/alice"))
    assert side.next_event() == Answer(Op.UPDATE, "8", Updated())
    assert side.next_event() is None


def test_smtpd_side_sends_an_unknown_service_number() -> None:
    side = smtpd_side()
    data = side.send(Request(Op.LOOKUP, "1", "t", None, "root", "0x4000"))
    assert data == imsg.request(Op.LOOKUP, None, "root", PID, service_code=0x4000)
    table = opened()
    table.receive_data(data)
    event = table.next_event()
    assert isinstance(event, Request) and event.service is None and event.raw_service == "0x4000"


def test_smtpd_side_violations_in_a_reply() -> None:
    side = smtpd_side()
    side.send(Request(Op.LOOKUP, "1", "t", Service.ALIAS, "root", "alias"))
    side.receive_data(imsg.message(imsg.PROC_TABLE_OK, imsg.RESULT.pack(1), 1))
    with pytest.raises(ProtocolViolation, match="empty response"):
        side.next_event()


def test_smtpd_side_keeps_an_unsolicited_message_for_the_next_request() -> None:
    side = smtpd_side()
    side.receive_data(imsg.message(imsg.PROC_TABLE_OK, imsg.RESULT.pack(0), 1))
    assert side.next_event() is None
    side.send(Request(Op.CHECK, "1", "t", Service.DOMAIN, "x", "domain"))
    assert side.next_event() == Answer(Op.CHECK, "1", NotFound())


def test_smtpd_side_refuses_requests_before_the_acknowledgement() -> None:
    side = imsg.SmtpdSide()
    with pytest.raises(ValueError):
        side.send(Request(Op.UPDATE, "1", "t"))
    side.send(Open("t"))
    with pytest.raises(ValueError):
        side.send(Request(Op.UPDATE, "1", "t"))


@pytest.mark.parametrize("reply", [Found("v@example.org"), NotFound(), Error("down"),
                                   Updated(), Found("x" * 20000)])
@pytest.mark.parametrize("op", list(Op))
def test_both_ends_round_trip(op: Op, reply: object) -> None:
    table, smtpd = TableSide(pid=9), imsg.SmtpdSide(pid=PID)
    table.receive_data(smtpd.send(Open("t")))
    assert table.next_event() == Hello("t")
    smtpd.receive_data(table.send(Ready()))
    assert smtpd.next_event() == Registered(())
    service = Service.ALIAS if op is not Op.UPDATE else None
    table.receive_data(smtpd.send(Request(op, "5", "t", service,
                                          "root" if op in (Op.CHECK, Op.LOOKUP) else None)))
    request = table.next_event()
    assert isinstance(request, Request) and request.op is op
    smtpd.receive_data(table.send(Answer(op, request.id, reply)))  # type: ignore[arg-type]
    answer = smtpd.next_event()
    assert isinstance(answer, Answer) and answer.id == "5"
    fits = {Op.UPDATE: (Updated,), Op.CHECK: (Found, NotFound), Op.LOOKUP: (Found, NotFound),
            Op.FETCH: (Found, NotFound)}[op]
    too_long = reply == Found("x" * 20000) and op is not Op.CHECK
    if not isinstance(reply, fits) or too_long:
        assert answer.reply == Error("-1")
    elif op is Op.CHECK and isinstance(reply, Found):
        assert answer.reply == Found()
    else:
        assert answer.reply == reply
