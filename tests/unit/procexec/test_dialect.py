"""The child's dialect, decided in one place (dialect.py): the state machine on its own,
then detection and forced dialects through the bridge with a fake clock."""

from __future__ import annotations

import logging

import pytest

from opensmtpd.procexec.dialect import SMTPD_VERSION, Dialect, Restart
from opensmtpd.table.wire.events import Error, Found, NotFound, Op, Updated
from opensmtpd.table.wire.services import Service
from opensmtpd.wire import ProtocolViolation

from .harness import TABLE, TS, Harness

ALIAS, DOMAIN = Service.ALIAS, Service.DOMAIN


# --- the state machine ------------------------------------------------------------------

def test_auto_probe_cycle(caplog: pytest.LogCaptureFixture) -> None:
    """native -> 2020 at once -> native after the back-off -> 2020 at once ..."""
    d = Dialect("auto")
    assert d.probing and d.current == "native" and d.native
    assert d.failed("it exited") is Restart.AT_ONCE
    assert d.current == "2020" and not d.native and d.probing
    assert "did not register (it exited): trying the 2020 dialect" in caplog.text
    assert d.failed("it wrote garbage") is Restart.BACKOFF
    assert d.current == "native" and d.native and d.probing
    assert "did not work either (it wrote garbage): back to the 0.1 handshake" in caplog.text
    assert d.failed("silent") is Restart.AT_ONCE and d.current == "2020"


def test_a_registration_settles_native_for_good() -> None:
    d = Dialect("auto")
    assert d.handshake(TABLE) is not None
    assert d.registration("register|alias") is None
    assert d.registration("register|domain") is None
    assert d.registration("register|alias") is None  # registered twice: once in the answer
    assert d.registration("register|ready") == (ALIAS, DOMAIN)
    assert d.known == "native" and not d.probing
    assert d.failed("it exited") is None  # no evidence about the dialect any more
    assert d.current == "native"


def test_a_good_2020_answer_settles_2020_for_good(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="opensmtpd")
    d = Dialect("auto")
    d.failed("no register|ready within 2s")
    d.answered()
    assert d.known == "2020"
    assert "the child answers in the 2020 dialect: keeping it" in caplog.text
    assert d.failed("it exited") is None and d.current == "2020"


@pytest.mark.parametrize("forced", ["native", "2020"])
def test_forced_dialect_never_switches(forced: str) -> None:
    d = Dialect(forced)
    assert d.known == forced and not d.probing
    for _ in range(3):
        assert d.failed("it exited") is None
    assert d.current == forced and d.native is (forced == "native")


def test_handshake_only_for_native() -> None:
    native = Dialect("native").handshake(TABLE)
    assert native == (f"config|smtpd-version|{SMTPD_VERSION}\nconfig|protocol|0.1\n"
                      f"config|tablename|{TABLE}\nconfig|ready\n").encode()
    assert Dialect("2020").handshake(TABLE) is None


def test_registration_unknown_service_skipped_other_lines_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    d = Dialect("auto")
    d.handshake(TABLE)
    assert d.registration("register|frobnicate") is None  # smtpd 7.6 exits; we skip it
    assert "frobnicate" in caplog.text
    with pytest.raises(ProtocolViolation):
        d.registration("table-result|x|found")
    assert d.probing  # refusing the line decides nothing: the bridge reports the failure
    assert d.registration("register|ready") == ()


def test_a_new_handshake_forgets_the_last_child_registrations() -> None:
    d = Dialect("native")
    d.handshake(TABLE)
    d.registration("register|alias")
    d.handshake(TABLE)  # that child died mid-handshake; the next one registers domain
    d.registration("register|domain")
    assert d.registration("register|ready") == (DOMAIN,)


def test_request_lines_and_ids_per_dialect() -> None:
    native, named, unnamed = Dialect("native"), Dialect("2020"), Dialect("2020", "unnamed")
    assert native.child_id(0x1_2345_6789) == "23456789"  # 8 hex digits
    assert named.child_id(0x1_2345_6789) == "0000000123456789"  # 16
    assert native.request(Op.LOOKUP, TABLE, "ab", ALIAS, "root", TS) == \
        f"table|0.1|{TS}|{TABLE}|lookup|alias|ab|root\n".encode()
    assert named.request(Op.LOOKUP, TABLE, "ab", ALIAS, "root", TS) == \
        f"table|0.1|{TS}|{TABLE}|lookup|ab|alias|root\n".encode()
    assert unnamed.request(Op.LOOKUP, TABLE, "ab", ALIAS, "root", TS) == \
        f"table|0.1|{TS}|lookup|ab|alias|root\n".encode()


@pytest.mark.parametrize(("protocol", "line", "expected"), [
    ("native", "lookup-result|ab|found|v", Found("v")),
    ("native", "lookup-result|ab|not-found", NotFound()),
    ("native", "lookup-result|ab|error|down", Error("down")),
    ("2020", "table-result|ab|found|v", Found("v")),
    ("2020", "table-response|ab|not-found", NotFound()),
    ("2020", "table-result|ab|failure", Error("failure")),
])
def test_replies_per_dialect(protocol: str, line: str, expected: object) -> None:
    assert Dialect(protocol).parse_reply(Op.LOOKUP, "ab", line) == expected


@pytest.mark.parametrize(("protocol", "line"), [
    ("native", "table-result|ab|found|s3cret"),
    ("native", "lookup-result|zz|found|s3cret"),
    ("2020", "lookup-result|ab|found|s3cret"),
    ("2020", "table-result|zz|found|s3cret"),
    ("2020", "table-result|ab|updated"),
])
def test_malformed_replies_raise_without_quoting_a_value(protocol: str, line: str) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        Dialect(protocol).parse_reply(Op.LOOKUP, "ab", line)
    assert "s3cret" not in str(caught.value)


def test_2020_update_reply() -> None:
    assert Dialect("2020").parse_reply(Op.UPDATE, "ab", "table-result|ab|updated") == Updated()


# --- through the bridge -----------------------------------------------------------------

def test_handshake_timeout_in_forced_native_restarts_with_backoff() -> None:
    h = Harness(protocol="native", handshake_timeout=1.0)
    h.open()
    h.spawn()
    h.sent()
    h.later(1.1)
    assert "register|ready" in h.killed()
    assert h.bridge.dialect.current == "native" and not h.bridge.spawn_due(h.now)


def test_forced_native_never_falls_back_to_2020() -> None:
    h = Harness(protocol="native")
    h.open()
    h.spawn()
    h.sent()
    h.child("table-result|x|found\n")
    h.killed()
    assert h.bridge.dialect.current == "native"
# --- the 2020 dialect and detection -----------------------------------------------------

def test_forced_2020_no_handshake_and_table_result() -> None:
    h = Harness(protocol="2020")
    h.open()
    h.spawn()
    assert h.sent() == []
    h.ask(Op.LOOKUP, ALIAS, "root")
    (line,) = h.sent()
    fields = line.split("|")
    # the article's named form: the table name before the op (what go-opensmtpd parses)
    assert fields[:5] == ["table", "0.1", TS, TABLE, "lookup"]
    assert fields[6:] == ["alias", "root"] and len(fields[5]) == 16
    h.child(f"table-result|{fields[5]}|found|vuser\n")
    h.ask(Op.CHECK, ALIAS, "x")
    cid = h.sent()[0].split("|")[5]
    h.child(f"table-result|{cid}|not-found\n")
    h.ask(Op.UPDATE)
    (update,) = h.sent()
    assert update.split("|")[3:5] == [TABLE, "update"]
    h.child(f"table-result|{update.split('|')[5]}|updated\n")
    h.ask(Op.LOOKUP, ALIAS, "y")
    fid = h.sent()[0].split("|")[5]
    h.child(f"table-result|{fid}|failure\n")
    # the article writes its replies table-response|…: the same to the bridge
    h.ask(Op.LOOKUP, ALIAS, "z")
    zid = h.sent()[0].split("|")[5]
    h.child(f"table-response|{zid}|found|gilles\n")
    assert h.replies() == [Found("vuser"), NotFound(), Updated(), Error("-1"), Found("gilles")]


def test_forced_2020_unnamed_form_only_when_asked() -> None:
    h = Harness(protocol="2020", form_2020="unnamed")
    h.open()
    h.spawn()
    h.ask(Op.LOOKUP, ALIAS, "root")
    (line,) = h.sent()
    fields = line.split("|")
    assert fields[:4] == ["table", "0.1", TS, "lookup"] and fields[5:] == ["alias", "root"]
    h.child(f"table-result|{fields[4]}|found|vuser\n")
    assert h.replies() == [Found("vuser")]


@pytest.mark.parametrize("how", ["silent", "garbage", "exit"])
def test_auto_falls_back_to_2020(how: str) -> None:
    h = Harness(handshake_timeout=1.0)
    h.open()
    h.spawn()
    h.sent()
    h.ask(Op.LOOKUP, ALIAS, "root")  # waits through the detection
    if how == "silent":
        h.later(1.0)
        h.killed()
    elif how == "garbage":
        h.child("table|what?\n")
        h.killed()
    else:
        h.bridge.child_exited("exited with status 1", h.now)
    assert h.bridge.dialect.current == "2020" and h.bridge.spawn_due(h.now)
    h.spawn()
    (line,) = h.sent()  # the queued request, now in the 2020 dialect
    rid = line.split("|")[5]
    h.child(f"table-result|{rid}|found|vuser\n")
    assert h.replies() == [Found("vuser")]
    assert h.bridge.dialect.known == "2020"  # confirmed: kept from now on
    h.bridge.child_exited("exited with status 1", h.now)
    h.later(1.0)
    h.spawn()
    assert h.sent() == []  # no handshake for the next one


def test_auto_failed_2020_probe_goes_back_to_native() -> None:
    h = Harness(handshake_timeout=1.0, deadline=2.0)
    h.open()
    h.spawn()
    h.sent()
    h.later(1.0)
    h.killed()
    h.spawn()  # 2020 attempt
    h.ask(Op.LOOKUP, ALIAS, "root")
    h.sent()
    h.later(2.5)  # silent in 2020 too
    assert h.replies() == [Error("-1")]
    h.killed()
    assert h.bridge.dialect.current == "native" and h.bridge.dialect.known is None


def test_auto_with_a_native_child_is_native() -> None:
    h = Harness()
    h.native_child("alias")
    assert h.bridge.dialect.known == "native"
    h.bridge.child_exited("exited with status 1", h.now)
    h.later(1)
    h.spawn()
    assert h.sent()[0].startswith("config|")

