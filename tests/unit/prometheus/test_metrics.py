"""filter-prometheus's metric mapping, per protocol version, on real and synthetic lines."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from opensmtpd.filter import Filter
from opensmtpd.prometheus.main import build
from opensmtpd.prometheus.metrics import EVENTS, SmtpdMetrics, address_family, reply_class

from ..filter import transcripts
from ..filter.transcripts import VERSIONS

SID = "0123456789abcdef"


class Rig:
    def __init__(self, *handshake: str, max_sessions: int = 100_000) -> None:
        self.filter, self.metrics, self.registry = build(max_sessions)
        self.registration = self.feed(*(handshake or (
            "config|smtpd-version|7.6.0-portable", "config|protocol|0.7",
            "config|subsystem|smtp-in", "config|subsystem|smtp-out", "config|ready")))

    def feed(self, *lines: str) -> list[str]:
        return self.filter.feed(("\n".join(lines) + "\n").encode()).decode().splitlines()

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        assert found is not None, (name, labels)
        return found

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()


def rep(event: str, params: str | None = None, *, sid: str = SID, sub: str = "smtp-in",
        version: str = "0.7", ts: float = 1700000000.0) -> str:
    return f"report|{version}|{ts:.6f}|{sub}|{event}|{sid}" + ("" if params is None
                                                                else f"|{params}")


def test_registers_only_what_the_metrics_need() -> None:
    rig = Rig()
    wanted = {f"register|report|{sub}|{event}" for sub in ("smtp-in", "smtp-out")
              for event in EVENTS}
    assert set(rig.registration[:-1]) == wanted and rig.registration[-1] == "register|ready"
    assert not any("filter|" in line for line in rig.registration)
    assert "protocol-client" not in "".join(rig.registration)
    rig68 = Rig("config|smtpd-version|6.8.0p2", "config|subsystem|smtp-in", "config|ready")
    assert not any("smtp-out" in line for line in rig68.registration)


@pytest.mark.parametrize("smtpd", VERSIONS)
def test_real_transcript_counts(smtpd: str) -> None:
    """Every counter equals what the lines say, counted independently here."""
    rig = Rig()
    lines = [line for line in transcripts.events(smtpd) if line.startswith("report|")]
    rig.feed(*lines)
    fields = [line.split("|") for line in lines]

    def count(sub: str, event: str, **where: str) -> int:
        return sum(1 for f in fields if f[3] == sub and f[4] == event and all(
            f[int(k[1:])] == v for k, v in where.items()))

    for sub in ("smtp-in", "smtp-out"):
        assert rig.value("smtpd_sessions_total", direction=sub, family="inet4") == \
            count(sub, "link-connect")
        assert rig.value("smtpd_transactions_begun_total", direction=sub) == count(sub, "tx-begin")
        assert rig.value("smtpd_transactions_committed_total", direction=sub) == \
            count(sub, "tx-commit")
        assert rig.value("smtpd_transactions_rolled_back_total", direction=sub) == \
            count(sub, "tx-rollback")
        assert rig.value("smtpd_message_size_bytes_count", direction=sub) == \
            count(sub, "tx-commit")
        assert rig.value("smtpd_message_size_bytes_sum", direction=sub) == sum(
            int(f[7]) for f in fields if f[3] == sub and f[4] == "tx-commit")
        assert rig.value("smtpd_timeouts_total", direction=sub) == count(sub, "timeout")
        assert rig.value("smtpd_tls_sessions_total", direction=sub) == count(sub, "link-tls")
        for result in ("ok", "permfail", "tempfail"):
            assert rig.value("smtpd_rcpt_to_total", direction=sub, result=result) == \
                count(sub, "tx-rcpt", f7=result)
            assert rig.value("smtpd_mail_from_total", direction=sub, result=result) == \
                count(sub, "tx-mail", f7=result)
        for result in ("pass", "fail", "error"):  # 7.6 sends 0.7: result first
            assert rig.value("smtpd_auth_total", direction=sub, result=result) == \
                count(sub, "link-auth", f6=result)
        replies = [f[6] for f in fields if f[3] == sub and f[4] == "protocol-server"
                   and f[6][3:4] != "-"]
        for kind in ("2", "3", "4", "5"):
            assert rig.value("smtpd_replies_total", direction=sub, **{"class": kind + "xx"}) \
                == sum(1 for r in replies if r.startswith(kind))
    ended = count("smtp-in", "link-disconnect")
    assert rig.value("smtpd_session_duration_seconds_count", direction="smtp-in") == ended
    # sessions the transcripts leave open (the probe was stopped) are still active
    assert rig.value("smtpd_sessions_active", direction="smtp-in", family="inet4") == \
        count("smtp-in", "link-connect") - ended
    assert rig.value("smtpd_exporter_unparsed_lines_total") == 0
    if smtpd == "7.6":
        assert rig.value("smtpd_auth_total", direction="smtp-in", result="pass") == 8
        assert rig.value("smtpd_auth_total", direction="smtp-in", result="fail") == 2
    else:
        assert rig.value("smtpd_timeouts_total", direction="smtp-in") == 1
        assert rig.value("smtpd_filter_rejections_total", direction="smtp-in",
                         phase="rcpt-to", code="550") == 1
        assert rig.value("smtpd_filter_rejections_total", direction="smtp-in",
                         phase="rcpt-to", code="451") == 1
        assert rig.value("smtpd_filter_disconnections_total", direction="smtp-in",
                         phase="mail-from", code="421") == 1


@pytest.mark.parametrize(("version", "params"), [
    ("0.4", "alice|pass"), ("0.5", "alice|pass"), ("0.6", "alice|pass"),
    ("0.6", "a|l|i|c|e|pass"), ("0.7", "pass|alice"), ("0.7", "pass|a|l|i|c|e"),
])
def test_auth_result_correct_on_every_version(version: str, params: str) -> None:
    """The seed's filter counted every 0.7 success as a failure (§6 defect 3)."""
    rig = Rig()
    rig.feed(rep("link-auth", params, version=version),
             rep("link-auth", params.replace("pass", "fail"), version=version))
    assert rig.value("smtpd_auth_total", direction="smtp-in", result="pass") == 1
    assert rig.value("smtpd_auth_total", direction="smtp-in", result="fail") == 1
    assert rig.value("smtpd_auth_total", direction="smtp-in", result="other") == 0


@pytest.mark.parametrize(("version", "params"), [
    ("0.5", "0000abcd|a@b.test|tempfail"), ("0.6", "0000abcd|tempfail|a@b.test"),
    ("0.7", "0000abcd|tempfail|a|b@c.test"),
])
def test_tx_results_on_every_version(version: str, params: str) -> None:
    rig = Rig()
    rig.feed(rep("tx-mail", params, version=version), rep("tx-rcpt", params, version=version))
    assert rig.value("smtpd_mail_from_total", direction="smtp-in", result="tempfail") == 1
    assert rig.value("smtpd_rcpt_to_total", direction="smtp-in", result="tempfail") == 1


def test_session_lifecycle_gauges_and_histograms() -> None:
    rig = Rig()
    rig.feed(rep("link-connect", "h|pass|[2001:db8::1]:4000|[::1]:25", ts=100.0),
             rep("link-tls", "TLSv1.3:X:256", ts=100.1),
             rep("tx-begin", "0000abcd", ts=101.0),
             rep("tx-commit", "0000abcd|2000", ts=101.5),
             rep("tx-begin", "0000abce", ts=102.0),
             rep("tx-rollback", "0000abce", ts=102.5))
    v6 = {"direction": "smtp-in", "family": "inet6"}
    assert rig.value("smtpd_sessions_active", **v6) == 1
    assert rig.value("smtpd_tls_sessions_active", direction="smtp-in") == 1
    assert rig.value("smtpd_time_to_commit_seconds_count", direction="smtp-in") == 1
    assert rig.value("smtpd_time_to_commit_seconds_sum", direction="smtp-in") == 0.5
    assert rig.value("smtpd_time_to_commit_seconds_bucket", direction="smtp-in", le="0.5") == 1
    assert rig.value("smtpd_time_to_commit_seconds_bucket", direction="smtp-in", le="0.25") == 0
    assert rig.value("smtpd_message_size_bytes_bucket", direction="smtp-in", le="4096.0") == 1
    assert rig.value("smtpd_message_size_bytes_bucket", direction="smtp-in", le="1024.0") == 0
    rig.feed(rep("link-disconnect", ts=130.0))
    assert rig.value("smtpd_sessions_active", **v6) == 0
    assert rig.value("smtpd_sessions_total", **v6) == 1
    assert rig.value("smtpd_tls_sessions_active", direction="smtp-in") == 0
    assert rig.value("smtpd_session_duration_seconds_sum", direction="smtp-in") == 30.0
    assert rig.value("smtpd_session_duration_seconds_bucket", direction="smtp-in",
                     le="30.0") == 1
    assert rig.value("smtpd_session_duration_seconds_bucket", direction="smtp-in",
                     le="10.0") == 0


def test_smtp_out_quirks_never_unbalance_gauges() -> None:
    rig = Rig()
    out = {"direction": "smtp-out", "family": "inet4"}
    rig.feed(rep("link-disconnect", sub="smtp-out"),  # never connected
             rep("tx-rollback", "0000abcd", sub="smtp-out"),  # no tx-begin
             rep("link-connect", "mx|pass|10.0.0.1:5000|192.0.2.7:25", sub="smtp-out",
                 sid="1" * 16),
             rep("link-connect", "mx|pass|10.0.0.1:5001|192.0.2.7:25", sub="smtp-out",
                 sid="1" * 16),  # reconnect of the same session
             rep("link-disconnect", sub="smtp-out", sid="1" * 16),
             rep("link-disconnect", sub="smtp-out", sid="1" * 16))
    assert rig.value("smtpd_sessions_active", **out) == 0
    assert rig.value("smtpd_sessions_total", **out) == 1
    assert rig.value("smtpd_session_duration_seconds_count", direction="smtp-out") == 1
    # the same id on smtp-in is another session (different processes allocate them)
    rig.feed(rep("link-connect", "a|pass|1.2.3.4:5|6.7.8.9:25", sid="1" * 16),
             rep("link-disconnect", sub="smtp-out", sid="1" * 16))
    assert rig.value("smtpd_sessions_active", direction="smtp-in", family="inet4") == 1


def test_family_of_smtp_out_is_the_remote() -> None:
    rig = Rig()
    rig.feed(rep("link-connect", "mx|pass|10.0.0.1:5000|[2001:db8::25]:25", sub="smtp-out"))
    assert rig.value("smtpd_sessions_total", direction="smtp-out", family="inet6") == 1


def test_eviction_releases_gauges() -> None:
    rig = Rig(max_sessions=10)
    rig.feed(*(rep("link-connect", f"h{i}|pass|1.2.3.{i % 250}:{i}|5.6.7.8:25",
                   sid=f"{i:016x}") for i in range(25)))
    rig.feed(*(rep("link-tls", "TLSv1.3:X:256", sid=f"{i:016x}") for i in range(15, 25)))
    assert rig.value("smtpd_sessions_active", direction="smtp-in", family="inet4") == 10
    assert rig.value("smtpd_sessions_total", direction="smtp-in", family="inet4") == 25
    assert rig.value("smtpd_exporter_sessions_evicted_total") == 15
    assert rig.value("smtpd_tls_sessions_active", direction="smtp-in") == 10


def test_filter_responses_bounded_labels() -> None:
    rig = Rig()
    rig.feed(rep("filter-response", "rcpt-to|reject|550 5.7.1 no"),
             rep("filter-response", "connected|disconnect|421 bye"),
             rep("filter-response", "made-up|reject|550 x"),
             rep("filter-response", "helo|reject|weird"),
             rep("filter-response", "helo|proceed"),
             rep("filter-response", "mail-from|rewrite|<x@y>"))
    assert rig.value("smtpd_filter_rejections_total", direction="smtp-in", phase="rcpt-to",
                     code="550") == 1
    assert rig.value("smtpd_filter_disconnections_total", direction="smtp-in",
                     phase="connected", code="421") == 1
    assert rig.value("smtpd_filter_rejections_total", direction="smtp-in", phase="other",
                     code="550") == 1
    assert rig.value("smtpd_filter_rejections_total", direction="smtp-in", phase="helo",
                     code="other") == 1
    assert "made-up" not in rig.exposition() and "weird" not in rig.exposition()


def test_no_wire_value_becomes_a_label() -> None:
    rig = Rig()
    secret = "mallory-helo.attacker.test"
    for i in range(200):
        sid = f"{i:016x}"
        rig.feed(rep("link-connect", f"{secret}{i}|pass|198.51.100.{i % 250}:{i}|"
                     "192.0.2.1:25", sid=sid),
                 rep("link-auth", f"pass|{secret}-user{i}", sid=sid),
                 rep("tx-mail", f"0000abcd|ok|{secret}{i}@x.test", sid=sid),
                 rep("protocol-server", f"250 {secret}", sid=sid),
                 rep("link-disconnect", sid=sid))
    text = rig.exposition()
    assert secret not in text and "198.51.100" not in text
    samples = sum(1 for line in text.splitlines() if not line.startswith("#"))
    assert samples < 400  # the same few series, however many sessions passed


def test_unknown_events_and_unparsed_lines_counted() -> None:
    rig = Rig()
    rig.feed(rep("link-teleport", "x"), rep("link-connect", "x", sub="stats"), "garbage",
             "report|0.7|1.0|smtp-in|tx-commit|0123456789abcdef|x|y")
    assert rig.value("smtpd_exporter_unparsed_lines_total") == 2
    assert rig.value("smtpd_exporter_unknown_events_total", direction="smtp-in") == 1
    assert rig.value("smtpd_exporter_unknown_events_total", direction="other") == 1


def test_build_info() -> None:
    rig = Rig("config|smtpd-version|6.8.0p2", "config|ready")
    text = rig.exposition()
    assert 'smtpd_exporter_build_info{python_version="' in text
    assert 'smtpd_version="6.8.0p2"' in text and 'version="0.1.0"' in text


def test_helpers() -> None:
    assert address_family("192.0.2.1:25") == "inet4"
    assert address_family("[::1]:25") == "inet6"
    assert address_family("unix:/var/run/smtpd.sock") == "unix"
    assert address_family(":0") == "other" and address_family("local") == "other"
    assert address_family("1.2.3:4") == "other" and address_family("a.b.c.d:25") == "other"
    assert reply_class("250-8BITMIME") is None and reply_class("250 HELP") == "2xx"
    assert reply_class("354 go") == "3xx" and reply_class("421") == "4xx"
    assert reply_class("hello") == "other" and reply_class("") == "other"


def test_handler_crash_never_stops_metrics() -> None:
    """A handler bug (here: a forced one) drops that event, counting goes on."""
    f = Filter()
    metrics = SmtpdMetrics()
    metrics.attach(f)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.collector)
    metrics._by_direction.clear()  # every smtp-in/out handler now raises KeyError
    f.feed(b"config|ready\n" + rep("tx-begin", "0000abcd").encode() + b"\ngarbage\n")
    assert registry.get_sample_value("smtpd_exporter_unparsed_lines_total") == 1


def test_promtool_check_metrics_clean() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus (see the Makefile)"
    rig = Rig()
    rig.feed(*[line for line in transcripts.events("7.6") if line.startswith("report|")])
    rig.feed(rep("filter-response", "rcpt-to|reject|550 5.7.1 no"))
    result = subprocess.run([promtool, "check", "metrics"], input=generate_latest(rig.registry),
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and result.stdout == b"" and result.stderr == b"", result
    # HELP and TYPE once per family (the seed repeated them per direction, §6 defect 2)
    text = rig.exposition()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert len(helps) == len(set(helps))


def test_ehlo_mid_transaction_on_79_is_one_rollback() -> None:
    """Recorded from smtpd 7.9.0p0 (Debian sid): EHLO, MAIL, RCPT, EHLO again, MAIL, RCPT,
    DATA. 7.9 treats the second EHLO as RSET (tx-rollback, tx-reset, link-identify); the
    file also holds the harness's readiness probe, a session that only connects."""
    lines = (transcripts.DATA / "smtpd-7.9-ehlo.in").read_text().splitlines()
    rig = Rig(*[line for line in lines if line.startswith("config|")])
    rig.feed(*[line for line in lines if not line.startswith("config|")])
    i = {"direction": "smtp-in"}
    assert rig.value("smtpd_sessions_total", family="inet4", **i) == 2
    assert rig.value("smtpd_sessions_active", family="inet4", **i) == 0
    assert rig.value("smtpd_transactions_begun_total", **i) == 2
    assert rig.value("smtpd_transactions_rolled_back_total", **i) == 1
    assert rig.value("smtpd_transactions_committed_total", **i) == 1
    assert rig.value("smtpd_mail_from_total", result="ok", **i) == 2
    assert rig.value("smtpd_rcpt_to_total", result="ok", **i) == 2
    assert rig.value("smtpd_time_to_commit_seconds_count", **i) == 1
    assert rig.value("smtpd_exporter_unparsed_lines_total") == 0
    assert 'smtpd_version="7.9.0-portable"' in rig.exposition()
