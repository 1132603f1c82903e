"""filter-prometheus on real smtpd 6.8 (host), 7.6 and 7.9 (chroots) at once, on a listener
and on a relay action, scraped by a real Prometheus: every counter equals what was sent.

The three generations run side by side (each root has its own control socket and spool)
so the 300 s session timeout — a compile-time constant of smtpd — is waited for only once.
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.smtpd import Root, Smtpd, free_port, send, wait_for

from .conftest import FILTER_CMD, IdleClient, promtool, scrape, wait_exporter

DASHBOARD = Path(__file__).resolve().parents[3] / "ops" / "grafana" / "opensmtpd-dashboard.json"


@dataclass
class Site:
    """One smtpd generation under test and what was sent to it."""

    root: Root
    port: int = field(default_factory=free_port)
    exporter: int = field(default_factory=free_port)
    server: Smtpd | None = None
    idle: IdleClient | None = None
    sessions: int = 0  # smtp-in connections made
    mail_ok: int = 0
    rcpt_ok: int = 0
    rcpt_refused: int = 0
    committed: int = 0
    rolled_back: int = 0
    filter_rejected: int = 0
    replies_5xx: int = 0
    auth_pass: int = 0
    auth_fail: int = 0
    tls: int = 0
    delivered: list[str] = field(default_factory=list)  # recipients the sink must get

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def domain(self) -> str:
        return f"r{self.name.replace('.', '')}.example.net"


def _conf(site: Site, sink_port: int) -> str:
    listener = f"listen on 127.0.0.1 port {site.port} filter incoming"
    head = ""
    if site.root.chrooted:  # 7.6, 7.9: inbound TLS works, so AUTH is offered
        crt, key = site.root.pki()
        head = (f'pki mx.test cert "{crt}"\npki mx.test key "{key}"\n'
                f'table creds {{ alice = "{site.root.crypt("Correct-Horse")}" }}\n')
        listener += " tls pki mx.test auth-optional <creds> hostname mx.test"
    return head + f"""
filter nospam phase mail-from match mail-from regex "^spam@" reject "550 5.7.1 No spam here"
filter prometheus proc-exec "{FILTER_CMD.format(port=site.exporter)}"
filter incoming chain {{ nospam, prometheus }}
{listener}
action "out" relay host smtp://127.0.0.1:{sink_port} filter prometheus
match from any for domain "{site.domain}" action "out"
"""


def _mix(site: Site) -> None:
    """The known mix; each step counts what it should show in the metrics."""
    for user in ("a", "b", "c"):
        outcome = send(site.port, "alice@client.test", f"{user}@{site.domain}")
        assert outcome.accepted, outcome
        site.sessions += 1
        site.mail_ok += 1
        site.rcpt_ok += 1
        site.committed += 1
        site.delivered.append(f"{user}@{site.domain}")
    _ehlo_mid_transaction(site)
    refused = send(site.port, "alice@client.test", "x@nowhere.test")
    assert (refused.stage, refused.code) == ("rcpt", 550), refused
    site.sessions += 1
    site.mail_ok += 1
    site.rcpt_refused += 1
    site.rolled_back += 1  # QUIT with the transaction open
    site.replies_5xx += 1
    spam = send(site.port, "spam@client.test", f"a@{site.domain}")
    assert (spam.stage, spam.code) == ("mail", 550), spam  # a builtin filter in the chain
    site.sessions += 1
    site.filter_rejected += 1
    site.replies_5xx += 1
    if site.root.chrooted:
        ok = send(site.port, "alice@client.test", f"d@{site.domain}", starttls=True,
                  auth=("alice", "Correct-Horse"))
        assert ok.accepted, ok
        assert _auth_once(site.port, "alice", "wrong-password") == 535
        site.sessions += 2
        site.tls += 2
        site.auth_pass += 1
        site.auth_fail += 1
        site.replies_5xx += 1
        site.mail_ok += 1
        site.rcpt_ok += 1
        site.committed += 1
        site.delivered.append(f"d@{site.domain}")


def _ehlo_mid_transaction(site: Site) -> None:
    """EHLO after MAIL FROM and RCPT TO. smtpd 7.9 treats it as RSET: the transaction is
    rolled back (tx-rollback, then tx-reset) and a new one begins with the next MAIL FROM.
    6.8 and 7.6 refuse a second EHLO (503 Already identified): the transaction goes on."""
    with smtplib.SMTP("127.0.0.1", site.port, local_hostname="client.test",
                      timeout=20) as client:
        client.ehlo()
        assert client.mail("alice@client.test")[0] == 250
        assert client.rcpt(f"e@{site.domain}")[0] == 250
        code, text = client.ehlo("again.client.test")
        site.sessions += 1
        site.mail_ok += 1
        site.rcpt_ok += 1
        if site.name == "7.9":
            assert code == 250, (code, text)
            site.rolled_back += 1
            assert client.mail("alice@client.test")[0] == 250
            assert client.rcpt(f"f@{site.domain}")[0] == 250
            site.mail_ok += 1
            site.rcpt_ok += 1
            rcpt = f"f@{site.domain}"
        else:
            assert code == 503, (code, text)
            site.replies_5xx += 1
            rcpt = f"e@{site.domain}"
        assert client.data(b"Subject: ehlo\r\n\r\nhello\r\n")[0] == 250
        site.committed += 1
        site.delivered.append(rcpt)


def _auth_once(port: int, user: str, password: str) -> int:
    """One AUTH PLAIN attempt (smtplib's login() would retry with LOGIN after a 535)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as client:
        client.ehlo()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo()
        client.user, client.password = user, password
        try:
            code, _ = client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPAuthenticationError as exc:
            code = exc.smtp_code
        return code


def _expected(site: Site) -> dict[str, float]:
    """PromQL (without the site selector) -> what the mix adds to it."""
    i, o = 'direction="smtp-in"', 'direction="smtp-out"'
    return {
        f'smtpd_sessions_total{{{i},family="inet4"}}': site.sessions,
        f"smtpd_sessions_active{{{i}}}": 0,
        f"smtpd_session_duration_seconds_count{{{i}}}": site.sessions,
        f'smtpd_mail_from_total{{{i},result="ok"}}': site.mail_ok,
        f'smtpd_rcpt_to_total{{{i},result="ok"}}': site.rcpt_ok,
        f'smtpd_rcpt_to_total{{{i},result="permfail"}}': site.rcpt_refused,
        f"smtpd_transactions_begun_total{{{i}}}": site.mail_ok,
        f"smtpd_transactions_committed_total{{{i}}}": site.committed,
        f"smtpd_transactions_rolled_back_total{{{i}}}": site.rolled_back,
        f"smtpd_message_size_bytes_count{{{i}}}": site.committed,
        f"smtpd_time_to_commit_seconds_count{{{i}}}": site.committed,
        f'smtpd_filter_rejections_total{{{i},phase="mail-from",code="550"}}':
            site.filter_rejected,
        f'smtpd_replies_total{{{i},class="5xx"}}': site.replies_5xx,
        f"smtpd_timeouts_total{{{i}}}": 1,
        f'smtpd_auth_total{{{i},result="pass"}}': site.auth_pass,
        f'smtpd_auth_total{{{i},result="fail"}}': site.auth_fail,
        f"smtpd_tls_sessions_total{{{i}}}": site.tls,
        f'smtpd_mail_from_total{{{o},result="ok"}}': site.committed,
        f'smtpd_rcpt_to_total{{{o},result="ok"}}': site.committed,
        f"smtpd_transactions_committed_total{{{o}}}": site.committed,
        f"smtpd_message_size_bytes_count{{{o}}}": site.committed,
        f"smtpd_sessions_active{{{o}}}": 0,
        "smtpd_exporter_unparsed_lines_total": 0,
        "smtpd_exporter_sessions_evicted_total": 0,
    }


def _select(expr: str, site: Site) -> str:
    """Add the site's label to every selector, and sum away the others."""
    label = f'smtpd="{site.name}"'
    selected = expr.replace("{", "{" + label + ",", 1) if "{" in expr else f"{expr}{{{label}}}"
    return f"sum({selected})"


def test_counters_equal_what_was_sent(host_root: Root, chroot_root: Root, sid_root: Root,  # type: ignore[no-untyped-def]
                                      smtpd, sink, prometheus) -> None:
    sites = [Site(host_root), Site(chroot_root), Site(sid_root)]
    for site in sites:
        site.server = smtpd(site.root, _conf(site, sink.port))
        site.server.start(port=site.port)
        wait_exporter(site.exporter)
    prom = prometheus({site.name: site.exporter for site in sites})
    assert prom.wait_value('count(up{job="opensmtpd"} == 1)', 3) == 3, prom.logs()
    # what the harness did before the mix (its readiness probe connects to the listener)
    baseline: dict[tuple[str, str], float] = {}
    for site in sites:
        assert prom.wait_value(_select('smtpd_sessions_active{direction="smtp-in"}', site), 0)\
            == 0
        for expr in _expected(site):
            baseline[(site.name, expr)] = prom.value(_select(expr, site)) or 0.0
    # the idle sessions first: smtpd times them out after 300 s (SMTPD_SESSION_TIMEOUT)
    started = time.monotonic()
    for site in sites:
        site.idle = IdleClient(site.port)
        site.sessions += 1
        site.mail_ok += 1
        site.rolled_back += 1  # the open transaction is rolled back at the timeout

    for site in sites:
        _mix(site)
    want = sorted(rcpt for site in sites for rcpt in site.delivered)
    assert wait_for(lambda: sorted(sink.recipients()) == want, timeout=60), sink.recipients()

    # a live scrape is clean for promtool, on every generation (prometheus_client 0.16
    # on the host, 0.21 in trixie and sid)
    for site in sites:
        body = scrape(site.exporter)
        assert body is not None
        check = subprocess.run([promtool(), "check", "metrics"], input=body,
                               capture_output=True, timeout=30)
        assert check.returncode == 0 and not check.stdout and not check.stderr, check

    # Prometheus loads the shipped rules, and every dashboard expression is valid PromQL
    rules = prom.api("rules")["groups"][0]["rules"]
    assert len(rules) == 9
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\$__rate_interval", "1m", target["expr"])
            expr = expr.replace("$job", "opensmtpd").replace("$instance", ".*")
            prom.query(expr)  # asserts status success

    for site in sites:
        assert site.idle is not None
        remaining = 330 - (time.monotonic() - started)
        assert site.idle.wait_closed(max(remaining, 5)), f"{site.name}: no timeout"
    for site in sites:
        for expr, sent in _expected(site).items():
            value = baseline[(site.name, expr)] + sent
            got = prom.wait_value(_select(expr, site), value, timeout=40)
            assert got == value, (site.name, expr, got, value,
                                  site.server.log()[-3000:] if site.server else "")
        # smtp-out: the mta reuses its connection, so sessions are not one per message;
        # each one that ended was timed
        opened = prom.value(_select('smtpd_sessions_total{direction="smtp-out"}', site))
        ended = prom.value(_select('smtpd_session_duration_seconds_count{direction="smtp-out"}',
                                   site))
        assert opened is not None and opened >= 1 and ended == opened, (opened, ended)
        assert site.server is not None and site.server.running()
        assert "lost processor" not in site.server.log()
