"""Line parsing on real smtpd 6.8 (0.6) and 7.6 (0.7) lines, older orders, and junk."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensmtpd.filter.wire import events as ev
from opensmtpd.filter.wire.parse import parse_config, parse_line, parse_version

from .. import transcripts
from ..transcripts import VERSIONS, find


@pytest.mark.parametrize("smtpd", VERSIONS)
def test_every_real_line_parses(smtpd: str) -> None:
    counts: dict[type, int] = {}
    for line in transcripts.events(smtpd):
        event = parse_line(line)
        assert not isinstance(event, (ev.Malformed, ev.UnknownReport)), (line, event)
        counts[type(event)] = counts.get(type(event), 0) + 1
        if isinstance(event, ev.Report):
            assert event.name == line.split("|")[4]
            assert event.subsystem == line.split("|")[3]
            assert event.version == {"6.8": "0.6", "7.6": "0.7"}[smtpd]
            assert event.session == line.split("|")[5] and len(event.session) == 16
            assert event.timestamp == float(line.split("|")[2])
    assert counts[ev.Query] > 50 and counts[ev.DataLine] > 50 and counts[ev.LinkConnect] > 5


def test_link_connect_smtp_in_and_out() -> None:
    event = parse_line(find("6.8", "smtp-in|link-connect|6ad15a377e8a04ae"))
    assert event == ev.LinkConnect("0.6", 1795597583.957921, "smtp-in", "6ad15a377e8a04ae",
                                   "localhost", "pass", "127.0.0.1:35514", "127.0.0.1:10025")
    out = parse_line(find("6.8", "smtp-out|link-connect"))
    assert isinstance(out, ev.LinkConnect)
    assert (out.subsystem, out.src, out.dest) == ("smtp-out", "127.0.0.1:47720",
                                                   "127.0.0.1:10026")


def test_link_connect_rdns_keeps_pipes_and_v6() -> None:
    line = ("report|0.7|1.000001|smtp-in|link-connect|00000000000000aa|"
            "we|ird|pass|[::1]:25|[::1]:2525")
    event = parse_line(line)
    assert isinstance(event, ev.LinkConnect)
    assert (event.rdns, event.fcrdns, event.src, event.dest) == ("we|ird", "pass", "[::1]:25",
                                                                "[::1]:2525")


def test_link_auth_0_7_real() -> None:
    ok = parse_line(find("7.6", "link-auth|a622011a38fb906d"))
    bad = parse_line(find("7.6", "link-auth|a622011f53d824c7"))
    assert isinstance(ok, ev.LinkAuth) and isinstance(bad, ev.LinkAuth)
    assert (ok.result, ok.username) == ("pass", "alice")
    assert (bad.result, bad.username) == ("fail", "bob")


@pytest.mark.parametrize(("version", "params", "result", "user"), [
    ("0.4", "alice|pass", "pass", "alice"),
    ("0.6", "alice|fail", "fail", "alice"),
    ("0.6", "al|ice|pass", "pass", "al|ice"),  # issue #1213: a | in the username
    ("0.6", "|error", "error", ""),
    ("0.7", "pass|alice", "pass", "alice"),
    ("0.7", "fail|al|ice", "fail", "al|ice"),
    ("0.8", "pass|alice", "pass", "alice"),  # newer: the newest layout known
])
def test_link_auth_field_order_by_version(version: str, params: str, result: str,
                                          user: str) -> None:
    event = parse_line(f"report|{version}|1.000001|smtp-in|link-auth|0123456789abcdef|{params}")
    assert isinstance(event, ev.LinkAuth), event
    assert (event.result, event.username) == (result, user)


def test_tx_mail_rcpt_0_6_real() -> None:
    mail = parse_line(find("6.8", "tx-mail|6ad15a377e8a04ae"))
    rcpt = parse_line(find("6.8", "tx-rcpt|6ad15a377e8a04ae"))
    assert mail == ev.TxMail("0.6", 1795597583.959150, "smtp-in", "6ad15a377e8a04ae",
                             "84f98383", "ok", "alice@example.org")
    assert isinstance(rcpt, ev.TxRcpt)
    assert (rcpt.msgid, rcpt.result, rcpt.address) == ("84f98383", "permfail",
                                                       "filterreject@example.net")


@pytest.mark.parametrize(("version", "params", "result", "address"), [
    ("0.4", "0000abcd|a@b.test|ok", "ok", "a@b.test"),
    ("0.5", "0000abcd|a|b@c.test|tempfail", "tempfail", "a|b@c.test"),
    ("0.5", "0000abcd||permfail", "permfail", ""),
    ("0.6", "0000abcd|ok|a@b.test", "ok", "a@b.test"),
    ("0.6", "0000abcd|ok|", "ok", ""),  # MAIL FROM:<>
    ("0.7", "0000abcd|permfail|x|y@z.test", "permfail", "x|y@z.test"),
])
@pytest.mark.parametrize("event", ["tx-mail", "tx-rcpt"])
def test_tx_mail_rcpt_field_order_by_version(version: str, params: str, result: str,
                                             address: str, event: str) -> None:
    parsed = parse_line(f"report|{version}|1.000001|smtp-in|{event}|0123456789abcdef|{params}")
    assert isinstance(parsed, (ev.TxMail, ev.TxRcpt)), parsed
    assert parsed.name == event
    assert (parsed.msgid, parsed.result, parsed.address) == ("0000abcd", result, address)


def test_parameterless_events_have_no_trailing_pipe() -> None:
    timeout = parse_line(find("6.8", "|timeout|"))
    assert isinstance(timeout, ev.Timeout) and timeout.session == "6ad15a2b1b809ffd"
    gone = parse_line(find("7.6", "link-disconnect"))
    assert isinstance(gone, ev.LinkDisconnect)
    tolerant = parse_line("report|0.7|1.000001|smtp-in|link-disconnect|0123456789abcdef|")
    assert isinstance(tolerant, ev.LinkDisconnect)


def test_other_real_events() -> None:
    commit = parse_line(find("6.8", "smtp-out|tx-commit"))
    assert isinstance(commit, ev.TxCommit) and commit.size == 373
    tls = parse_line(find("7.6", "link-tls"))
    assert isinstance(tls, ev.LinkTLS) and tls.tls == "TLSv1.3:TLS_AES_256_GCM_SHA384:256"
    reject = parse_line(find("6.8", "filter-response", "rcpt-to|reject|550"))
    assert isinstance(reject, ev.FilterResponse)
    assert (reject.phase, reject.response, reject.param) == ("rcpt-to", "reject",
                                                             "550 5.7.1 rejected by probe")
    proceed = parse_line(find("7.6", "filter-response", "connected|proceed"))
    assert isinstance(proceed, ev.FilterResponse) and proceed.param is None
    server = parse_line(find("7.6", "protocol-server", "250-mx.test Hello"))
    assert isinstance(server, ev.ProtocolServer)
    assert server.response == "250-mx.test Hello vm [127.0.0.1], pleased to meet you"
    client = parse_line(find("7.6", "protocol-client", "AUTH PLAIN"))
    assert isinstance(client, ev.ProtocolClient) and client.command == "AUTH PLAIN ********"
    identify = parse_line(find("6.8", "link-identify", "idleclient"))
    assert isinstance(identify, ev.LinkIdentify)
    assert (identify.method, identify.identity) == ("EHLO", "idleclient.example.org")
    envelope = parse_line(find("6.8", "tx-envelope"))
    assert isinstance(envelope, ev.TxEnvelope) and len(envelope.envelope_id) == 16
    data = parse_line(find("6.8", "tx-data"))
    assert isinstance(data, ev.TxData) and data.result == "ok"
    greeting = parse_line(find("6.8", "link-greeting"))
    assert isinstance(greeting, ev.LinkGreeting) and greeting.hostname == "vm"
    for name, cls in (("tx-begin", ev.TxBegin), ("tx-reset", ev.TxReset),
                      ("tx-rollback", ev.TxRollback)):
        parsed = parse_line(find("6.8", f"|{name}|"))
        assert isinstance(parsed, cls) and len(parsed.msgid) == 8  # type: ignore[attr-defined]


def test_filter_report_event() -> None:
    event = parse_line("report|0.6|1.000001|smtp-in|filter-report|0123456789abcdef|builtin|"
                       "trusted|hello | world")
    assert isinstance(event, ev.FilterReport)
    assert (event.kind, event.filter_name, event.message) == ("builtin", "trusted",
                                                              "hello | world")


def test_queries_real() -> None:
    connect = parse_line(find("6.8", "filter|", "|connect|"))
    assert isinstance(connect, ev.Query)
    assert (connect.phase, connect.rdns, connect.src) == ("connect", "localhost", "127.0.0.1")
    assert connect.token == "382762de82cc45e2"
    quit_ = parse_line(find("6.8", "filter|", "|quit|"))  # trailing pipe: empty param
    assert isinstance(quit_, ev.Query) and quit_.param == "" and quit_.phase == "quit"
    auth = parse_line(find("7.6", "filter|", "|auth|", "PLAIN"))
    assert isinstance(auth, ev.Query) and auth.param.startswith("PLAIN ")
    rcpt = parse_line(find("6.8", "filter|", "rcpt-to", "filterreject"))
    assert isinstance(rcpt, ev.Query) and rcpt.param == "filterreject@example.net"


def test_data_lines_raw() -> None:
    stuffed = parse_line(find("6.8", "data-line", "..starts"))
    piped = parse_line(find("7.6", "data-line", "with pipe"))
    end = parse_line(find("7.6", "data-line", "|."))
    assert isinstance(stuffed, ev.DataLine) and stuffed.line == "..starts with a dot"
    assert isinstance(piped, ev.DataLine) and piped.line == "line | with pipe"
    assert isinstance(end, ev.DataLine) and end.line == "."
    empty = parse_line("filter|0.7|1.000001|smtp-in|data-line|0123456789abcdef|00000000000000ff|")
    assert isinstance(empty, ev.DataLine) and empty.line == ""


def test_unknown_events_subsystems_versions() -> None:
    new_event = parse_line("report|0.7|1.000001|smtp-in|link-teleport|0123456789abcdef|a|b")
    assert isinstance(new_event, ev.UnknownReport)
    assert (new_event.name, new_event.params) == ("link-teleport", "a|b")
    new_sub = parse_line("report|0.7|1.000001|stats|link-connect|0123456789abcdef|x")
    assert isinstance(new_sub, ev.UnknownReport) and new_sub.subsystem == "stats"
    ancient = parse_line("report|1|1.000001|smtp-in|link-connect|0123456789abcdef|a|b|c|d")
    assert isinstance(ancient, ev.Malformed) and "version" in ancient.reason
    assert parse_version("0.6") == (0, 6) and parse_version("0.12") == (0, 12)
    assert parse_version("1") is None and parse_version("0.x") is None
    assert parse_version("０.６") is None


@pytest.mark.parametrize("line", [
    "",
    "report",
    "report|0.7|1.0|smtp-in|link-connect",
    "report|0.7|1.0|smtp-in|link-connect|",
    "report|0.7|1.0|smtp-in|link-connect|0123456789abcdef|a|b|c",
    "report|0.7|nan|smtp-in|timeout|0123456789abcdef",
    "report|0.7|inf|smtp-in|timeout|0123456789abcdef",
    "report|0.7|soon|smtp-in|timeout|0123456789abcdef",
    "report|0.7|1.0|smtp-in|tx-commit|0123456789abcdef|0000abcd|big",
    "report|0.7|1.0|smtp-in|tx-commit|0123456789abcdef",
    "report|0.7|1.0|smtp-in|link-auth|0123456789abcdef|pass",
    "report|0.6|1.0|smtp-in|tx-mail|0123456789abcdef|0000abcd|ok",
    "report|0.7|1.0|smtp-in|link-identify|0123456789abcdef|EHLO",
    "report|0.7|1.0|smtp-in|filter-response|0123456789abcdef|rcpt-to",
    "report|0.7|1.0|smtp-in|filter-report|0123456789abcdef|builtin|x",
    "filter|0.7|1.0|smtp-in|helo|0123456789abcdef",
    "filter|0.7|1.0|smtp-in|helo||00000000000000ff|x",
    "register|ready",
    "config|ready",
])
def test_malformed_lines(line: str) -> None:
    event = parse_line(line)
    assert isinstance(event, ev.Malformed), event
    assert event.query is None and len(event.line) <= 81


def test_query_with_bad_version_is_still_answerable() -> None:
    event = parse_line("filter|9|1.0|smtp-in|helo|0123456789abcdef|00000000000000ff|x")
    assert isinstance(event, ev.Malformed) and isinstance(event.query, ev.Query)
    assert (event.query.session, event.query.token) == ("0123456789abcdef", "00000000000000ff")
    event = parse_line("filter|0.7|later|smtp-in|data-line|0123456789abcdef|00000000000000ff|x")
    assert isinstance(event, ev.Malformed) and isinstance(event.query, ev.DataLine)
    assert math.isnan(event.query.timestamp)


def test_config_6_6_has_no_subsystems() -> None:
    config = parse_config([("smtpd-version", "6.6.4p1"), ("smtp-session-timeout", "x")])
    assert config.subsystems == frozenset() and config.session_timeout is None


# --- fuzzing: nothing raises ---


@settings(max_examples=3000, deadline=None)
@given(st.text())
def test_parse_line_never_raises(text: str) -> None:
    event = parse_line(text)
    assert event is not None


_FIELD = st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=12)
_PREFIX = st.sampled_from(["report", "filter"])
_VERSION = st.sampled_from(["0.4", "0.5", "0.6", "0.7", "0.8", "1", ""])
_NAME = st.sampled_from([*ev.REPORT_EVENTS, *ev.PHASES, "", "x"])


@settings(max_examples=3000, deadline=None)
@given(_PREFIX, _VERSION, st.sampled_from(["1.000001", "x", "", "1e400"]),
       st.sampled_from(["smtp-in", "smtp-out", "x"]), _NAME, st.lists(_FIELD, max_size=7))
def test_structured_lines_never_raise(prefix: str, version: str, stamp: str, sub: str,
                                      name: str, fields: list[str]) -> None:
    line = "|".join([prefix, version, stamp, sub, name, *fields])
    assert parse_line(line) is not None
