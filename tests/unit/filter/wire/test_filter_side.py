"""The filter's end of the pipe: framing and handshake of smtpd's bytes (real smtpd 6.8
and 7.6 runs, pieces, junk), and everything it sends (registration, answers, data lines)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensmtpd.filter.wire import events as ev
from opensmtpd.filter.wire.dataline import END, unstuff
from opensmtpd.filter.wire.decisions import Decision, InvalidDecision, proceed, reject, report
from opensmtpd.filter.wire.filter_side import MAX_LINE, FilterSide
from opensmtpd.filter.wire.parse import max_line, order, parse_line

from .. import transcripts
from ..transcripts import VERSIONS


def events(side: FilterSide, data: bytes) -> list[ev.Event]:
    """Every event ``data`` completes."""
    side.receive_data(data)
    out = []
    while (event := side.next_event()) is not None:
        out.append(event)
    return out


def registration(config: ev.Config, reports: dict[str, object], phases: object) -> list[str]:
    side = FilterSide()
    side.config = config
    return side.send(ev.Registration(reports, phases)).decode().splitlines()  # type: ignore[arg-type]


def filter_result(query: ev.Query, decision: Decision | None) -> str:
    return FilterSide().send(ev.Result(query, decision)).decode().removesuffix("\n")


def filter_dataline(query: ev.DataLine, line: str) -> str:
    """The answer echoing ``line`` as received (stuffed; ``.`` ends the message)."""
    lines = ev.DataLines(query, (), end=True) if line == END else ev.DataLines(
        query, (unstuff(line),))
    return FilterSide().send(lines).decode("utf-8", "surrogateescape").removesuffix("\n")


@pytest.mark.parametrize("smtpd", VERSIONS)
def test_every_run_handshake(smtpd: str) -> None:
    for run in transcripts.runs(smtpd):
        side = FilterSide()
        out = events(side, ("\n".join(run) + "\n").encode())
        config = out[0]
        assert isinstance(config, ev.Config), out[:3]
        assert config.smtpd_version == {"6.8": "6.8.0p2", "7.6": "7.6.0-portable"}[smtpd]
        assert config.session_timeout == 300
        assert config.admd == "vm"
        assert "smtp-in" in config.subsystems
        assert config.protocol == ("0.7" if smtpd == "7.6" else None)
        assert config.accepts_report_decision is (smtpd == "7.6")
        assert not any(isinstance(e, (ev.Malformed, ev.Config)) for e in out[1:])
        assert len(out) == len(run) - sum(line.startswith("config|") for line in run) + 1


def test_long_data_line_accepted() -> None:
    text = "x" * 65535
    line = f"filter|0.7|1.000001|smtp-in|data-line|0123456789abcdef|00000000000000ff|{text}\n"
    side = FilterSide()
    events(side, b"config|ready\n")
    out = [e for chunk in range(0, len(line), 4096)
           for e in events(side, line[chunk:chunk + 4096].encode())]
    assert len(out) == 1 and isinstance(out[0], ev.DataLine) and out[0].line == text


def test_overlong_line_dropped_and_stream_recovers() -> None:
    side = FilterSide()
    events(side, b"config|ready\n")
    junk = b"report|0.7|" + b"y" * (MAX_LINE + 10)
    assert events(side, junk) == []
    out = events(side, b"zz\nreport|0.7|1.000001|smtp-in|timeout|0123456789abcdef\n")
    assert isinstance(out[0], ev.Malformed) and "longer" in out[0].reason
    assert isinstance(out[1], ev.Timeout)
    assert len(side._buffer) == 0


def test_handshake_in_pieces_and_unknown_keys() -> None:
    stream = (b"config|smtpd-version|7.8.0-portable\nconfig|protocol|0.7\n"
              b"config|smtp-session-timeout|300\nconfig|subsystem|smtp-in\n"
              b"config|subsystem|smtp-out\nconfig|admd|mx.example.org\n"
              b"config|shiny-new-key|v|with|pipes\nconfig|flag\nconfig|ready\n"
              b"report|0.7|1576146008.006099|smtp-in|link-connect|7641df9771b4ed00|"
              b"mail.openbsd.org|pass|199.185.178.25:33174|45.77.67.80:25\n")
    side = FilterSide()
    out = []
    for i in range(len(stream)):  # one byte at a time
        out.extend(events(side, stream[i:i + 1]))
    config, connect = out
    assert isinstance(config, ev.Config) and isinstance(connect, ev.LinkConnect)
    assert config.subsystems == {"smtp-in", "smtp-out"}
    assert config.get("shiny-new-key") == "v|with|pipes" and config.get("flag") == ""
    assert config.items[0] == ("smtpd-version", "7.8.0-portable")
    assert connect.rdns == "mail.openbsd.org"


def test_handshake_garbage_is_reported_not_fatal() -> None:
    out = events(FilterSide(), b"hello\nconfig|ready\n")
    assert isinstance(out[0], ev.Malformed) and isinstance(out[1], ev.Config)


def test_invalid_utf8_survives_the_round_trip() -> None:
    raw = b"filter|0.6|1.000001|smtp-in|data-line|0123456789abcdef|00000000000000ff|caf\xe9 \xff\n"
    side = FilterSide()
    events(side, b"config|ready\n")
    (event,) = events(side, raw)
    assert isinstance(event, ev.DataLine)
    out = filter_dataline(event, event.line)
    assert out.encode("utf-8", "surrogateescape") == (
        b"filter-dataline|0123456789abcdef|00000000000000ff|caf\xe9 \xff")


# --- registration and answers ---


def _config(*subsystems: str, protocol: str | None = None) -> ev.Config:
    return ev.Config("7.6.0", protocol, 300, frozenset(subsystems))


def test_registration_wildcard_dedup_and_order() -> None:
    lines = registration(_config("smtp-in", "smtp-out"),
                         {"smtp-in": {"tx-mail", "link-connect", "*"},
                          "smtp-out": ["link-connect", "link-connect", "timeout"]},
                         {"rcpt-to", "connect"})
    assert lines == ["register|report|smtp-in|*", "register|report|smtp-out|link-connect",
                     "register|report|smtp-out|timeout", "register|filter|smtp-in|connect",
                     "register|filter|smtp-in|rcpt-to", "register|ready"]


def test_registration_never_sends_what_smtpd_would_fatal_on() -> None:
    # smtp-out not announced (6.6, or no relay action with the filter): fatal there.
    lines = registration(_config("smtp-in"), {"smtp-out": {"*"}, "smtp-in": {"bogus"},
                                              "stats": {"*"}}, {"nope", "helo"})
    assert lines == ["register|filter|smtp-in|helo", "register|ready"]
    assert registration(_config(), {}, ()) == ["register|ready"]


@pytest.mark.parametrize(("smtpd", "wiz"), [
    ("6.6.4p1", True), ("6.8.0p2", True), ("7.6.0-portable", True), ("7.8.0-portable", True),
    ("7.9.0-portable", False), ("7.9.0", False), ("7.10.1", False),
    ("", False), ("garbage", False),  # unknown: wiz could be fatal, so it is left out
])
def test_registration_leaves_out_wiz_from_79(smtpd: str, wiz: bool) -> None:
    # smtpd 7.9 removed FILTER_WIZ: register|filter|smtp-in|wiz is fatalx there
    config = ev.Config(smtpd, "0.7", 300, frozenset({"smtp-in"}))
    lines = registration(config, {}, {"wiz", "helo", "commit"})
    assert lines == ["register|filter|smtp-in|helo", *(["register|filter|smtp-in|wiz"]
                     if wiz else []), "register|filter|smtp-in|commit", "register|ready"]
    assert config.accepts_phase("wiz") is wiz
    assert all(config.accepts_phase(p) for p in ev.PHASES if p != "wiz")


def test_answer_order_by_version() -> None:
    q4 = ev.Query("0.4", 1.0, "smtp-in", "helo", "aaaaaaaaaaaaaaaa", "tttttttttttttttt", "x")
    q6 = ev.Query("0.6", 1.0, "smtp-in", "helo", "aaaaaaaaaaaaaaaa", "tttttttttttttttt", "x")
    assert filter_result(q4, None) == "filter-result|tttttttttttttttt|aaaaaaaaaaaaaaaa|proceed"
    assert filter_result(q6, proceed()) == "filter-result|aaaaaaaaaaaaaaaa|tttttttttttttttt|proceed"
    d4 = ev.DataLine("0.4", 1.0, "smtp-in", "s", "t", "x")
    assert filter_dataline(d4, "x") == "filter-dataline|t|s|x"
    assert order("garbage", "s", "t") == "s|t"
    assert max_line("0.6") == 2047 and max_line("0.7") == 65535 and max_line("0.9") == 65535


@pytest.mark.parametrize("smtpd", VERSIONS)
def test_probe_answers_match_the_real_ones(smtpd: str) -> None:
    """The lab probe answered proceed and echoed lines: our serializer gives the same."""
    real = transcripts.answers(smtpd)
    ours = []
    for line in transcripts.events(smtpd):
        event = parse_line(line)
        if isinstance(event, ev.DataLine):
            ours.append(filter_dataline(event, event.line))
        elif isinstance(event, ev.Query):
            ours.append(filter_result(event, proceed()))
    real_proceeds = [a for a in real if a.startswith("filter-dataline") or a.endswith("|proceed")]
    assert [a for a in ours if a.startswith("filter-dataline")] == \
        [a for a in real_proceeds if a.startswith("filter-dataline")]
    assert {a for a in real_proceeds if a.endswith("|proceed")} <= set(ours)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_filter_side_never_raises_on_bytes(chunks: list[bytes]) -> None:
    side = FilterSide()
    for chunk in [b"config|ready\n", *chunks]:
        for event in events(side, chunk):
            assert event is not None


# --- the h11 shape: events one at a time, sends checked ---


def test_next_event_waits_for_whole_lines() -> None:
    side = FilterSide()
    side.receive_data(b"config|smtpd-version|7.6.0-portable\nconfig|re")
    assert side.next_event() is None and side.config is None
    side.receive_data(b"ady\nreport|0.7|1.000001|smtp-in|timeout|0123456789abcdef")
    assert isinstance(side.next_event(), ev.Config) and side.next_event() is None
    side.receive_data(b"\n")
    assert isinstance(side.next_event(), ev.Timeout) and side.next_event() is None


def test_overlong_line_after_whole_lines_in_one_read() -> None:
    """The complete lines before an overlong one are kept, in order."""
    side = FilterSide()
    side.receive_data(b"config|ready\nreport|0.7|1.000001|smtp-in|timeout|0123456789abcdef\n"
                      + b"x" * (MAX_LINE + 1))
    side.receive_data(b"tail\nreport|0.7|1.000001|smtp-in|timeout|0123456789abcdee\n")
    kinds = [type(e) for e in iter(side.next_event, None)]
    assert kinds == [ev.Config, ev.Timeout, ev.Malformed, ev.Timeout]
    assert len(side._buffer) == 0


def _q(phase: str, version: str = "0.7") -> ev.Query:
    return ev.Query(version, 1.0, "smtp-in", phase, "0123456789abcdef", "00000000000000ff", "")


def test_send_refuses_what_smtpd_would_refuse() -> None:
    side = FilterSide()
    with pytest.raises(InvalidDecision):
        side.send(ev.Result(_q("helo"), Decision("reject", "250 ok")))
    with pytest.raises(InvalidDecision, match=r"7\.6"):  # no handshake yet: not allowed
        side.send(ev.Result(_q("data"), report("seen")))
    events(side, b"config|smtpd-version|7.6.0-portable\nconfig|protocol|0.7\nconfig|ready\n")
    assert side.send(ev.Result(_q("data"), report("seen"))).endswith(b"|report|seen\n")
    with pytest.raises(ValueError):
        side.send(ev.DataLines(ev.DataLine("0.7", 1.0, "smtp-in", "s", "t", "x"), ["a\nb"]))
    with pytest.raises(TypeError):
        side.send(_q("helo"))  # type: ignore[arg-type]


def test_datalines_stuffed_cut_and_ended() -> None:
    query = ev.DataLine("0.6", 1.0, "smtp-in", "0123456789abcdef", "00000000000000ff", ".")
    out = FilterSide().send(ev.DataLines(query, [".dot", "a" * 3000, ""], end=True))
    lines = out.decode().split("\n")
    head = "filter-dataline|0123456789abcdef|00000000000000ff|"
    assert lines[0] == head + "..dot" and lines[-2:] == [head + ".", ""]
    assert all(len(line) <= 2047 for line in lines)
    assert "".join(line.removeprefix(head) for line in lines[1:-3]) == "a" * 3000
    assert lines[-3] == head
    assert FilterSide().send(ev.DataLines(query, [])) == b""


def test_result_ids_in_the_order_of_the_query_version() -> None:
    out = FilterSide().send(ev.Result(_q("helo", "0.4"), reject("550 5.7.1 no")))
    assert out == b"filter-result|00000000000000ff|0123456789abcdef|reject|550 5.7.1 no\n"


def test_a_parser_bug_costs_its_batch_never_the_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """next_event never raises: a bug in a parser (forced here: no input triggers one on
    demand) drops the lines of that batch as one Malformed event, and parsing goes on."""
    import opensmtpd.filter.wire.filter_side as module

    def fake_broken_parser(line: str) -> ev.Event:
        raise RuntimeError("parser bug")

    side = FilterSide()
    events(side, b"config|ready\n")
    monkeypatch.setattr(module, "parse_report", fake_broken_parser)
    side.receive_data(b"report|0.7|1.000001|smtp-in|timeout|0123456789abcdef\n")
    (broken,) = list(iter(side.next_event, None))
    assert isinstance(broken, ev.Malformed) and "internal error" in broken.reason
    monkeypatch.undo()
    assert [type(e) for e in events(
        side, b"report|0.7|1.000001|smtp-in|timeout|0123456789abcdef\n")] == [ev.Timeout]


@pytest.mark.parametrize("smtpd", VERSIONS)
def test_events_at_once_are_next_events_one_by_one(smtpd: str) -> None:
    data = "".join(line + "\n" for run in transcripts.runs(smtpd) for line in run).encode()
    one, batch = FilterSide(), FilterSide()
    singles, batches = [], []
    for start in range(0, len(data), 700):
        piece = data[start:start + 700]
        singles += events(one, piece)
        batch.receive_data(piece)
        batches += batch.next_events()
        assert batch.next_events() == []
    assert singles == batches and len(singles) > 100
