"""The bridge core: imsg replies exactly as smtpd 6.8 needs them, whatever the child does.
(Dialect detection: test_dialect.py; requests waiting through restarts: test_pending.py.)"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensmtpd.procexec import Phase
from opensmtpd.table.wire import imsg
from opensmtpd.table.wire.events import Error, Found, NotFound, Op, Updated
from opensmtpd.table.wire.services import Service

from .harness import TABLE, TS, Harness, lookup_line

ALIAS, DOMAIN, USERINFO = Service.ALIAS, Service.DOMAIN, Service.USERINFO


# --- OPEN and the 0.1 handshake ---------------------------------------------------------

def test_open_is_acknowledged_empty_and_starts_the_child() -> None:
    h = Harness()
    assert not h.bridge.spawn_due(h.now)
    h.open()
    assert h.bridge.table == TABLE and h.bridge.spawn_due(h.now)


def test_handshake_after_open_gives_the_child_the_table_name() -> None:
    h = Harness()
    h.native_child("alias", "userinfo")  # asserts config|tablename|aliases was sent
    assert h.bridge.phase is Phase.READY and h.bridge.dialect.known == "native"
    assert h.bridge.services == {ALIAS, USERINFO}


def test_requests_during_the_handshake_wait_for_it() -> None:
    h = Harness()
    h.open()
    h.spawn()
    h.sent()
    h.ask(Op.LOOKUP, ALIAS, "root")
    assert h.sent() == [] and h.replies() == []
    h.child("register|alias\nregister|ready\n")
    _, rid = lookup_line(h)
    h.child(f"lookup-result|{rid}|found|vuser\n")
    assert h.replies() == [Found("vuser")]


def test_unknown_registration_is_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.native_child("alias", "frobnicate")
    assert h.bridge.services == {ALIAS}
    assert "frobnicate" in caplog.text


# --- the reply mapping (table-protocols.md §1.6, §3.4, §5.1) ----------------------------

@pytest.mark.parametrize(("op", "answer", "expected"), [
    (Op.LOOKUP, "found|vuser", Found("vuser")),
    (Op.LOOKUP, "not-found", NotFound()),
    (Op.LOOKUP, "error|backend down", Error("-1")),
    (Op.LOOKUP, "error", Error("-1")),
    (Op.CHECK, "found", Found()),
    (Op.CHECK, "not-found", NotFound()),  # 0, not table-stdio's -1
    (Op.CHECK, "error|x", Error("-1")),
    (Op.FETCH, "found|10.0.0.1", Found("10.0.0.1")),
    (Op.FETCH, "not-found", NotFound()),
])
def test_native_replies_map_exactly(op: Op, answer: str, expected: object) -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(op, ALIAS, None if op is Op.FETCH else "root")
    (line,) = h.sent()
    rid = line.split("|")[6]
    h.child(f"{op.value}-result|{rid}|{answer}\n")
    assert h.replies() == [expected]


def test_check_not_found_is_zero_on_the_wire() -> None:
    h = Harness()
    h.native_child("domain")
    h.ask(Op.CHECK, DOMAIN, "example.org")
    rid = h.sent()[0].split("|")[6]
    h.child(f"check-result|{rid}|not-found\n")
    reply = h.bridge.take_smtpd_output()
    assert reply[imsg.HEADER_SIZE:] == imsg.RESULT.pack(0)
    assert imsg.HEADER.unpack_from(reply)[0] == imsg.PROC_TABLE_OK


@pytest.mark.parametrize(("answer", "expected"), [("ok", Updated()),
                                                  ("error|reload failed", Error("-1"))])
def test_update(answer: str, expected: object) -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(Op.UPDATE)
    (line,) = h.sent()
    assert line == f"table|0.1|{TS}|{TABLE}|update|{line.split('|')[5]}"
    h.child(f"update-result|{line.split('|')[5]}|{answer}\n")
    assert h.replies() == [expected]


def test_unregistered_service_is_refused_without_asking(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(Op.LOOKUP, USERINFO, "root")
    h.ask(Op.LOOKUP, USERINFO, "other")
    assert h.sent() == []
    assert h.replies() == [Error("-1"), Error("-1")]
    assert caplog.text.count("did not register") == 1  # warned once per service


def test_unknown_service_number_is_refused() -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(Op.LOOKUP, None, "root", code=0x4000)
    assert h.sent() == [] and h.replies() == [Error("-1")]


def test_key_with_a_newline_never_reaches_the_child() -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "root\nlookup-result|x|found|evil")
    assert h.sent() == [] and h.replies() == [Error("-1")]


def test_key_with_a_pipe_is_the_last_field() -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "a|b")
    line, rid = lookup_line(h, key="a")
    assert line.endswith(f"|{rid}|a|b")


def test_value_too_long_for_imsg_is_an_error(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "root")
    _, rid = lookup_line(h)
    h.child(f"lookup-result|{rid}|found|{'x' * (imsg.MAX_VALUE + 1)}\n")
    assert h.replies() == [Error("-1")]
    assert "does not fit an imsg reply" in caplog.text
    h.ask(Op.LOOKUP, ALIAS, "root")  # the largest value that fits still goes through
    _, rid = lookup_line(h)
    h.child(f"lookup-result|{rid}|found|{'x' * imsg.MAX_VALUE}\n")
    assert h.replies() == [Found("x" * imsg.MAX_VALUE)]


# --- malformed child lines --------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "garbage",
    "lookup-result|{id}|maybe",
    "lookup-result|{id}|found|",  # empty value: smtpd 7.6 would exit
    "check-result|{id}|found",  # the wrong operation
    "lookup-result|{id}",
])
def test_malformed_line_is_minus_one_and_logged(line: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "root")
    _, rid = lookup_line(h)
    caplog.clear()
    h.child(line.format(id=rid) + "\n")
    assert h.replies() == [Error("-1")]
    assert "malformed" in caplog.text and repr(line.format(id=rid))[:30] in caplog.text
    assert h.bridge.kill_reason is None  # a stray line does not cost the child its life
    h.ask(Op.LOOKUP, ALIAS, "root")
    _, rid = lookup_line(h)
    h.child(f"lookup-result|{rid}|found|vuser\n")
    assert h.replies() == [Found("vuser")]


def test_log_lines_name_the_table(caplog: pytest.LogCaptureFixture) -> None:
    """The runtime's formatter prefixes "table NAME"; here the message itself names the
    request, and the line is quoted."""
    h = Harness()
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "root")
    lookup_line(h)
    h.child("hello world\n")
    assert "'hello world'" in caplog.text and "lookup alias 'root'" in caplog.text


def test_overlong_line_is_an_error() -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "root")
    _, rid = lookup_line(h)
    h.child(f"lookup-result|{rid}|found|{'y' * 70000}\n")
    assert h.replies() == [Error("-1")]


# --- deadlines and late replies ---------------------------------------------------------

def test_deadline_then_late_reply_is_discarded(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(deadline=2.0)
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "root")
    _, rid = lookup_line(h)
    h.later(1.9)
    assert h.replies() == []
    assert h.bridge.next_wakeup() == pytest.approx(h.now + 0.1)
    h.later(0.2)
    assert h.replies() == [Error("-1")]
    h.ask(Op.LOOKUP, ALIAS, "root")
    _, rid2 = lookup_line(h)
    h.child(f"lookup-result|{rid}|found|stale\n")  # recognised by its id and dropped
    assert h.replies() == []
    assert f"late reply to request {rid} discarded" in caplog.text
    h.child(f"lookup-result|{rid2}|found|fresh\n")
    assert h.replies() == [Found("fresh")]


def test_hung_child_is_restarted_after_consecutive_misses() -> None:
    h = Harness(deadline=1.0, restart_after=2)
    h.native_child("alias")
    for _ in range(2):
        h.ask(Op.LOOKUP, ALIAS, "root")
        h.sent()
        h.later(1.5)
        assert h.replies() == [Error("-1")]
    assert "no reply in time" in h.killed()
    assert h.bridge.spawn_at is not None and h.bridge.spawn_at > h.now  # with back-off


def test_replies_reach_smtpd_in_request_order() -> None:
    h = Harness()
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "a")
    h.ask(Op.LOOKUP, ALIAS, "b")
    first, second = (line.split("|")[6] for line in h.sent())
    h.child(f"lookup-result|{second}|found|B\n")
    assert h.replies() == []
    h.child(f"lookup-result|{first}|found|A\n")
    assert h.replies() == [Found("A"), Found("B")]


# --- crashes and back-off ---------------------------------------------------------------

def test_crash_fails_what_the_child_was_asked_then_backs_off(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(min_backoff=0.25, max_backoff=1.0)
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "root")
    h.sent()
    h.bridge.child_exited("was killed by SIGKILL", h.now)
    assert h.replies() == [Error("-1")]  # at once, never resent (it may be the killer)
    assert "was killed by SIGKILL" in caplog.text
    assert not h.bridge.spawn_due(h.now)
    delays = []
    for _ in range(4):  # crash loop: 0.25, 0.5, 1, 1 (capped)
        assert h.bridge.spawn_at is not None
        delays.append(h.bridge.spawn_at - h.now)
        h.later(h.bridge.spawn_at - h.now)
        h.spawn()
        h.bridge.child_exited("exited with status 1", h.now)
    assert delays == [0.25, 0.5, 1.0, 1.0]
    h.later(1.0)
    h.spawn()
    h.sent()
    h.child("register|alias\nregister|ready\n")
    h.ask(Op.LOOKUP, ALIAS, "root")
    _, rid = lookup_line(h)
    h.child(f"lookup-result|{rid}|found|vuser\n")
    assert h.replies() == [Found("vuser")]
    h.bridge.child_exited("exited with status 1", h.now)  # healthy again: short back-off
    assert h.bridge.spawn_at == pytest.approx(h.now + 0.25)


def test_exec_failure_is_retried_with_backoff() -> None:
    h = Harness()
    h.open()
    h.bridge.spawn_failed("/nope: No such file or directory", h.now)
    assert not h.bridge.spawn_due(h.now) and h.bridge.spawn_at == pytest.approx(h.now + 0.25)


# --- invariants under anything the child can write --------------------------------------

child_lines = st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=40),
    st.sampled_from(["lookup-result|{id}|found|v", "lookup-result|{id}|not-found",
                     "check-result|{id}|found", "lookup-result|{id}|error|x",
                     "update-result|{id}|ok", "register|alias", "register|ready",
                     "table-result|{id}|found|v", "lookup-result|{id}|found|"]),
), max_size=8)


@settings(max_examples=300, deadline=None)
@given(child=child_lines, protocol=st.sampled_from(["auto", "native", "2020"]),
       ops=st.lists(st.sampled_from([Op.LOOKUP, Op.CHECK, Op.FETCH, Op.UPDATE]),
                    min_size=1, max_size=4),
       crash=st.booleans())
def test_every_request_gets_exactly_one_wellformed_reply(
        child: list[str], protocol: str, ops: list[Op], crash: bool) -> None:
    logging.getLogger("opensmtpd").setLevel(logging.CRITICAL)
    h = Harness(protocol=protocol, deadline=1.0)
    h.open()
    h.spawn()
    h.child("register|alias\nregister|ready\n")
    for op in ops:
        h.ask(op, None if op is Op.UPDATE else ALIAS, None if op in (Op.FETCH, Op.UPDATE)
              else "root")
    sent = h.sent()
    # the id: field 6 in 0.1 (op|service|id), field 5 in the 2020 named form (op|id|service)
    ids = [line.split("|")[6 if len(line.split("|")[5]) != 16 else 5] for line in sent
           if line.startswith("table|") and line.count("|") > 5]
    replies = []
    for text in child:
        h.child(text.replace("{id}", ids[0] if ids else "0") + "\n")
        replies += h.replies()  # raises where smtpd 6.8 would exit
    if crash and h.bridge.child_pid is not None:
        h.bridge.child_exited("exited", h.now)
    if h.bridge.kill_reason is not None:
        h.killed()
    h.later(1.5)
    replies += h.replies()
    assert len(replies) == len(ops)
