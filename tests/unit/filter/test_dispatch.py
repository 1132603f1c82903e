"""Dispatch without I/O (``Filter.feed``): real transcripts through a Filter, sessions,
the error policy, data lines, async handlers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from opensmtpd.filter import (
    Filter,
    LinkConnect,
    Query,
    Report,
    Session,
    disconnect,
    junk,
    reject,
    report,
    rewrite,
)

from . import transcripts
from .transcripts import VERSIONS

HANDSHAKE_68 = ["config|smtpd-version|6.8.0p2", "config|smtp-session-timeout|300",
                "config|subsystem|smtp-in", "config|admd|vm", "config|ready"]
HANDSHAKE_76 = ["config|smtpd-version|7.6.0-portable", "config|protocol|0.7",
                "config|smtp-session-timeout|300", "config|subsystem|smtp-in",
                "config|subsystem|smtp-out", "config|admd|vm", "config|ready"]
SID = "0123456789abcdef"
TOKEN = "00000000000000ff"


def feed(f: Filter, lines: list[str]) -> list[str]:
    """Lines through the filter as smtpd sends them (one pipe per filter)."""
    out = f.feed(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    return out.decode("utf-8", "surrogateescape").splitlines()


def q(phase: str, param: str = "", version: str = "0.7", sid: str = SID) -> str:
    return f"filter|{version}|1700000000.000001|smtp-in|{phase}|{sid}|{TOKEN}|{param}"


def rep(event: str, params: str | None = None, version: str = "0.7", sid: str = SID,
        sub: str = "smtp-in", ts: str = "1700000000.000001") -> str:
    tail = "" if params is None else f"|{params}"
    return f"report|{version}|{ts}|{sub}|{event}|{sid}{tail}"


def answer(text: str, sid: str = SID) -> str:
    return f"filter-result|{sid}|{TOKEN}|{text}"


def data(line: str, version: str = "0.7") -> str:
    return q("data-line", line, version)


def out_data(line: str) -> str:
    return f"filter-dataline|{SID}|{TOKEN}|{line}"


# --- real transcripts ---


@pytest.mark.parametrize("smtpd", VERSIONS)
def test_transcript_every_query_answered_once_in_order(smtpd: str) -> None:
    seen: list[str] = []

    def build() -> Filter:
        f = Filter()
        f.on_phase("connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to",
                   "data", "rset", "quit", "noop", "commit")(
            lambda session, query: seen.append(query.phase))
        f.on_data_line(lambda session, line: None)
        return f

    out = []
    for run in transcripts.runs(smtpd):  # a new smtpd run: a new pipe, a new process
        out += [line for line in feed(build(), run) if not line.startswith("register|")]
    queries = [line for line in transcripts.events(smtpd) if line.startswith("filter|")]
    expected = []
    for line in queries:
        fields = line.split("|", 7)
        if fields[4] == "data-line":
            expected.append(f"filter-dataline|{fields[5]}|{fields[6]}|{fields[7]}")
        else:
            expected.append(f"filter-result|{fields[5]}|{fields[6]}|proceed")
    assert out == expected
    # the lab probe echoed the same lines, and smtpd delivered those messages intact
    assert [a for a in out if a.startswith("filter-dataline")] == [
        a for a in transcripts.answers(smtpd) if a.startswith("filter-dataline")]
    assert len(seen) == sum(1 for line in queries if "|data-line|" not in line)


@pytest.mark.parametrize("smtpd", VERSIONS)
def test_transcript_reports_and_sessions(smtpd: str) -> None:
    got: dict[tuple[str, str], int] = {}

    def count(session: Session, event: Report) -> None:
        assert (session.subsystem, session.id) == (event.subsystem, event.session)
        got[(event.subsystem, event.name)] = got.get((event.subsystem, event.name), 0) + 1

    filters = []
    for run in transcripts.runs(smtpd):  # a new smtpd run: a new pipe, a new process
        f = Filter()
        f.on_report(subsystem="*")(count)
        filters.append(f)
        assert feed(f, run)[0] == "register|report|smtp-in|*"
    reports = [line.split("|") for line in transcripts.events(smtpd)
               if line.startswith("report|")]
    expected: dict[tuple[str, str], int] = {}
    for fields in reports:
        expected[(fields[3], fields[4])] = expected.get((fields[3], fields[4]), 0) + 1
    assert got == expected
    # every session of the transcripts ended with link-disconnect, except smtpd 6.8's
    # idle one (its timeout/disconnect close the run) and smtp-out ones cut by the stop
    assert sum(len(f.sessions) for f in filters) <= 3


def test_registration_follows_handlers_and_config() -> None:
    def build() -> Filter:
        f = Filter(on_error="tempfail")
        f.on_report("tx-mail", subsystem="*")(lambda s, e: None)
        f.on_report("link-auth")(lambda s, e: None)
        f.on_phase("mail-from")(lambda s, q: None)
        f.on_message(lambda s, lines: None)
        return f

    assert feed(build(), HANDSHAKE_68) == [
        "register|report|smtp-in|link-disconnect", "register|report|smtp-in|link-auth",
        "register|report|smtp-in|tx-mail", "register|filter|smtp-in|mail-from",
        "register|filter|smtp-in|data-line", "register|filter|smtp-in|commit",
        "register|ready"]
    out = feed(build(), HANDSHAKE_76)
    assert "register|report|smtp-out|tx-mail" in out
    assert "register|report|smtp-out|link-disconnect" in out


def test_unknown_names_refused_at_registration() -> None:
    f = Filter()
    with pytest.raises(ValueError):
        f.on_report("link-reset")  # there is no such event (tx-reset): refused at once
    with pytest.raises(ValueError):
        f.on_report("link-connect", subsystem="smtp-sideways")
    with pytest.raises(ValueError):
        f.on_phase("connected")  # the report name, not the phase name
    with pytest.raises(ValueError):
        f.on_phase("data-line")
    f.on_data_line(lambda s, line: None)
    with pytest.raises(ValueError):
        f.on_message(lambda s, lines: None)
    with pytest.raises(ValueError):
        Filter(on_error="bounce")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Filter(tempfail_reply="550 5.0.0 no")


HANDSHAKE_79 = [line.replace("7.6.0", "7.9.0") for line in HANDSHAKE_76]


@pytest.mark.parametrize(("handshake", "logged"), [
    (HANDSHAKE_79, "smtpd 7.9.0 has no wiz phase (registering it would stop smtpd): "
                   "the wiz handler is not registered"),
    ([line.replace("7.6.0-portable", "nightly") for line in HANDSHAKE_76],
     "smtpd version 'nightly' unknown: the wiz handler is not registered "
     "(smtpd >= 7.9 stops on it)"),
])
def test_wiz_handler_not_registered_where_fatal(handshake: list[str], logged: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    f = Filter()
    f.on_phase("wiz")(lambda s, q: None)
    f.on_phase("mail-from")(lambda s, q: reject("550 5.7.1 no"))
    with caplog.at_level(logging.WARNING, logger="opensmtpd.filter"):
        out = feed(f, handshake)
    assert out == ["register|report|smtp-in|link-disconnect",
                   "register|filter|smtp-in|mail-from", "register|ready"]
    assert [r.getMessage() for r in caplog.records if "wiz" in r.getMessage()] == [logged]
    # the other phases work as before
    assert feed(f, [q("mail-from", "a@b.test")]) == [answer("reject|550 5.7.1 no")]


def test_wiz_handler_registered_where_smtpd_has_the_phase(
        caplog: pytest.LogCaptureFixture) -> None:
    for handshake in (HANDSHAKE_68, HANDSHAKE_76):
        f = Filter()
        f.on_phase("wiz")(lambda s, q: None)
        with caplog.at_level(logging.WARNING, logger="opensmtpd.filter"):
            assert "register|filter|smtp-in|wiz" in feed(f, handshake)
    assert not caplog.records


def test_nothing_registered_is_still_a_valid_handshake() -> None:
    assert feed(Filter(), HANDSHAKE_76) == ["register|ready"]


# --- sessions ---


def test_sessions_keyed_by_subsystem_and_cleared() -> None:
    f = Filter()
    sessions: list[Session] = []
    f.on_report("*", subsystem="*")(lambda s, e: sessions.append(s))
    feed(f, [*HANDSHAKE_76,
             rep("link-connect", "mx.test|pass|192.0.2.1:1234|192.0.2.2:25"),
             rep("link-connect", "peer.test|pass|192.0.2.2:4567|192.0.2.9:25", sub="smtp-out"),
             rep("link-identify", "EHLO|client.test"),
             rep("link-auth", "pass|alice"),
             rep("tx-begin", "0000abcd")])
    inbound = f.sessions.find("smtp-in", SID)
    outbound = f.sessions.find("smtp-out", SID)
    assert inbound is not None and outbound is not None and inbound is not outbound
    assert (inbound.rdns, inbound.src, inbound.helo, inbound.username, inbound.msgid) == (
        "mx.test", "192.0.2.1:1234", "client.test", "alice", "0000abcd")
    assert outbound.rdns == "peer.test" and outbound.helo is None
    assert inbound.started == 1700000000.000001
    feed(f, [rep("link-disconnect")])
    assert f.sessions.find("smtp-in", SID) is None
    assert f.sessions.find("smtp-out", SID) is outbound
    assert sessions[-1] is inbound  # the handler saw the session it ended


def test_smtp_out_quirks() -> None:
    f = Filter()
    ends: list[Session] = []
    f.on_report("link-disconnect", subsystem="smtp-out")(lambda s, e: ends.append(s))
    f.on_report("link-connect", subsystem="smtp-out")(lambda s, e: None)
    f.on_report("tx-reset", subsystem="smtp-out")(lambda s, e: None)
    feed(f, [*HANDSHAKE_76,
             rep("link-disconnect", sub="smtp-out"),  # never connected
             rep("tx-reset", "0000abcd", sub="smtp-out", sid="1" * 16),  # no tx-begin
             rep("link-connect", "a|pass|1.2.3.4:1|5.6.7.8:25", sub="smtp-out", sid="2" * 16),
             rep("link-connect", "b|pass|1.2.3.4:2|5.6.7.8:25", sub="smtp-out", sid="2" * 16)])
    assert ends[0].id == SID and ends[0].started is None
    assert len(f.sessions) == 2
    again = f.sessions.find("smtp-out", "2" * 16)
    assert again is not None and again.rdns == "b"


def test_session_table_is_bounded() -> None:
    f = Filter(max_sessions=100)
    f.on_report("link-connect")(lambda s, e: None)
    evicted: list[str] = []
    f.on_evict(lambda session: evicted.append(session.id))
    feed(f, [*HANDSHAKE_68, *(rep("link-connect", f"h{i}|pass|1.2.3.4:{i}|5.6.7.8:25",
                                  version="0.6", sid=f"{i:016x}") for i in range(1000))])
    assert len(f.sessions) == 100 and f.sessions.evicted == 900
    assert evicted == [f"{i:016x}" for i in range(900)]  # oldest first
    assert f.sessions.find("smtp-in", f"{999:016x}") is not None
    assert f.sessions.find("smtp-in", f"{0:016x}") is None


def test_unknown_events_reach_wildcard_and_unknown_handlers() -> None:
    f = Filter()
    seen: list[str] = []
    f.on_report("*")(lambda s, e: seen.append(e.name))
    f.on_unknown(lambda s, e: seen.append("unknown:" + e.name))
    feed(f, [*HANDSHAKE_76, rep("link-teleport", "x"), rep("link-connect", "a|pass|b|c"),
             rep("link-connect", "x", sub="stats")])
    assert seen == ["unknown:link-teleport", "link-teleport", "link-connect",
                    "unknown:link-connect"]
    assert len(f.sessions) == 1  # no session kept for unknown subsystems


# --- phases and the error policy ---


def test_decisions_reach_the_wire() -> None:
    f = Filter()
    decisions: dict[str, Any] = {"helo": junk(), "mail-from": rewrite("x@y.test"),
                                 "rcpt-to": reject("550 5.1.1 no such user"),
                                 "data": disconnect("421 4.7.0 go"), "commit": report("hi")}
    for phase, decision in decisions.items():
        f.on_phase(phase)(lambda s, query, d=decision: d)
    out = feed(f, [*HANDSHAKE_76, *(q(p) for p in decisions)])
    assert out[-5:] == [answer("junk"), answer("rewrite|<x@y.test>"),
                        answer("reject|550 5.1.1 no such user"),
                        answer("disconnect|421 4.7.0 go"), answer("report|hi")]


def test_query_fields_given_to_the_handler() -> None:
    f = Filter()
    got: list[Query] = []
    f.on_phase("connect")(lambda s, query: got.append(query))
    feed(f, [*HANDSHAKE_68, q("connect", "host|with|pipes|[2001:db8::1]", "0.6")])
    assert got[0].rdns == "host|with|pipes" and got[0].src == "[2001:db8::1]"


def test_answer_order_0_4() -> None:
    f = Filter()
    f.on_phase("helo")(lambda s, query: None)
    out = feed(f, ["config|smtpd-version|6.6.4p1", "config|ready", q("helo", "x", "0.4")])
    assert out == ["register|report|smtp-in|link-disconnect", "register|filter|smtp-in|helo",
                   "register|ready", f"filter-result|{TOKEN}|{SID}|proceed"]


def boom(*args: Any) -> Any:
    raise RuntimeError("secret-in-message")


@pytest.mark.parametrize(("policy", "phase", "expected"), [
    ("proceed", "mail-from", "proceed"),
    ("proceed", "connect", "proceed"),
    ("tempfail", "mail-from", "reject|451 4.3.0 Temporary failure in a mail filter, try "
                              "again later"),
    ("tempfail", "connect", "disconnect|421 4.3.0 Temporary failure in a mail filter, try "
                            "again later"),
    ("tempfail", "quit", "proceed"),
    ("tempfail", "commit", "reject|451 4.3.0 Temporary failure in a mail filter, try "
                           "again later"),
])
def test_handler_exception_policy(policy: Any, phase: str, expected: str,
                                  caplog: pytest.LogCaptureFixture) -> None:
    f = Filter(on_error=policy)
    f.on_phase(phase)(boom)
    out = feed(f, [*HANDSHAKE_76, q(phase)])
    assert out[-1] == answer(expected)
    assert "RuntimeError" in caplog.text


def test_auth_exception_text_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    f = Filter()
    f.on_phase("auth")(boom)
    out = feed(f, [*HANDSHAKE_76, q("auth", "PLAIN AGFsaWNlAFNlY3JldDE=")])
    assert out[-1] == answer("proceed")
    assert "RuntimeError" in caplog.text
    assert "secret-in-message" not in caplog.text and "AGFsaWNl" not in caplog.text


@pytest.mark.parametrize("bad", ["550 no", 42, junk(), report("x")])
def test_invalid_decisions_follow_the_policy(bad: Any, caplog: pytest.LogCaptureFixture) -> None:
    f = Filter(on_error="tempfail", tempfail_reply="450 4.7.1 later")
    f.on_phase("commit")(lambda s, query: bad)
    out = feed(f, [*HANDSHAKE_68, q("commit", version="0.6")])  # report: 6.8 would exit
    assert out[-1] == answer("reject|450 4.7.1 later")
    assert "invalid decision" in caplog.text


def test_report_handler_exception_dropped_with_a_log(caplog: pytest.LogCaptureFixture) -> None:
    f = Filter()
    seen: list[str] = []
    f.on_report("tx-mail")(boom)
    f.on_report("tx-mail")(lambda s, e: seen.append(e.address))
    out = feed(f, [*HANDSHAKE_76, *[rep("tx-mail", f"0000abcd|ok|a{i}@b.test")
                                    for i in range(50)]])
    assert out == ["register|report|smtp-in|link-disconnect", "register|report|smtp-in|tx-mail",
                   "register|ready"]
    assert len(seen) == 50
    assert caplog.text.count("RuntimeError") == 10  # throttled


def test_malformed_query_still_answered(caplog: pytest.LogCaptureFixture) -> None:
    f = Filter()
    bad: list[str] = []
    f.on_malformed(lambda event: bad.append(event.reason))
    f.on_phase("helo")(lambda s, query: reject("550 no"))
    out = feed(f, [*HANDSHAKE_76,
                   f"filter|7|1.0|smtp-in|helo|{SID}|{TOKEN}|x",
                   f"filter|0.7|later|smtp-in|data-line|{SID}|{TOKEN}|..x",
                   "report|garbage"])
    assert out[-2:] == [answer("proceed"), out_data("..x")]
    assert len(bad) == 3 and "unparsed line" in caplog.text


# --- data lines ---


def test_data_line_handler_stuffing_and_end() -> None:
    f = Filter()
    got: list[str] = []

    @f.on_data_line
    def edit(session: Session, line: str) -> Any:
        got.append(line)
        if line == "drop me":
            return []
        if line == "split":
            return ".one\ntwo"
        return line.upper()

    out = feed(f, [*HANDSHAKE_76, data("Subject: x"), data("..dot"), data("drop me"),
                   data("split"), data("a|b"), data("."), data("after")])
    assert got == ["Subject: x", ".dot", "drop me", "split", "a|b", "after"]
    assert out[-7:] == [out_data("SUBJECT: X"), out_data("..DOT"), out_data("..one"),
                        out_data("two"), out_data("A|B"), out_data("."), out_data("AFTER")]


def test_failing_data_handler_passes_lines_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    f = Filter()
    f.on_data_line(boom)
    out = feed(f, [*HANDSHAKE_76, data("a"), data("..b"), data(".")])
    assert out[-3:] == [out_data("a"), out_data("..b"), out_data(".")]


def test_message_handler() -> None:
    f = Filter()
    got: list[list[str]] = []

    @f.on_message
    def edit(session: Session, lines: list[str]) -> Any:
        got.append(lines)
        return None if len(got) == 1 else ["X-Filtered: yes", *lines, ".tail"]

    first = feed(f, [*HANDSHAKE_76, data("Received: x"), data(""), data("..a"), data(".")])
    second = feed(f, [data("b"), data(".")])
    assert got == [["Received: x", "", ".a"], ["b"]]
    assert first[-4:] == [out_data("Received: x"), out_data(""), out_data("..a"), out_data(".")]
    assert second[-4:] == [out_data("X-Filtered: yes"), out_data("b"), out_data("..tail"),
                           out_data(".")]


def test_tempfail_policy_refuses_a_message_whose_filter_failed() -> None:
    f = Filter(on_error="tempfail")
    f.on_message(lambda s, lines: boom() if lines == ["bad"] else None)
    out = feed(f, [*HANDSHAKE_76, data("bad"), data("."), q("commit"),
                   data("good"), data("."), q("commit")])
    assert out[-6:] == [out_data("bad"), out_data("."),
                        answer("reject|" + f.tempfail_reply),
                        out_data("good"), out_data("."), answer("proceed")]


def test_tempfail_policy_refuses_even_with_a_commit_handler() -> None:
    """The commit handler would let the unfiltered message through: it is not asked."""
    f = Filter(on_error="tempfail")
    f.on_message(lambda s, lines: boom() if lines == ["bad"] else None)
    asked: list[str] = []
    f.on_phase("commit")(lambda s, query: asked.append(query.phase))
    out = feed(f, [*HANDSHAKE_76, data("bad"), data("."), q("commit"),
                   data("good"), data("."), q("commit")])
    assert out[-6:] == [out_data("bad"), out_data("."),
                        answer("reject|" + f.tempfail_reply),
                        out_data("good"), out_data("."), answer("proceed")]
    assert asked == ["commit"]  # only for the good message


@pytest.mark.parametrize(("version", "limit", "count"), [("0.6", 2047, 3), ("0.7", 65535, 1)])
def test_long_lines_kept_under_smtpd_limits(version: str, limit: int, count: int) -> None:
    f = Filter()
    f.on_data_line(lambda s, line: None)
    out = feed(f, [*HANDSHAKE_76, data("z" * 5000, version)])
    assert len(out) - 3 == count  # after the three registration lines
    for line in out[3:]:
        assert len(line.encode()) <= limit
    assert "".join(line.rsplit("|", 1)[1] for line in out[3:]) == "z" * 5000


# --- async ---


def test_async_handlers_and_deadline() -> None:
    f = Filter(deadline=0.2, on_error="tempfail")

    @f.on_phase("helo")
    async def slow(session: Session, query: Query) -> Any:
        await asyncio.sleep(5 if query.param == "slow" else 0)
        return reject("550 5.7.1 no")

    seen: list[str] = []

    @f.on_report("link-connect")
    async def connected(session: Session, event: LinkConnect) -> None:
        await asyncio.sleep(0)
        seen.append(event.rdns)

    @f.on_data_line
    async def upper(session: Session, line: str) -> str:
        return line.upper()

    assert f.is_async
    lines = [*HANDSHAKE_76, rep("link-connect", "r|pass|a|b"), q("helo", "fast"),
             q("helo", "slow"), data("x"), data(".")]
    out = feed(f, lines)  # on an event loop of its own, events in order
    assert seen == ["r"]
    assert out[-4:] == [answer("reject|550 5.7.1 no"), answer("reject|" + f.tempfail_reply),
                        out_data("X"), out_data(".")]


def test_no_handler_logs_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    f = Filter()
    f.on_phase("helo")(lambda s, query: None)
    assert feed(f, [*HANDSHAKE_76, q("ehlo")])[-1] == answer("proceed")  # not registered
