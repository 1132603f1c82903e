"""The seed's OpenSMTPD 6.7 filter features with our parts: builtin filters whose tables
are served by a Python table (opensmtpd.table.MappingTable), chained with
filter-prometheus, on real smtpd 6.8 and 7.6.

    filter trusted phase mail-from match src <trusted> bypass
    filter auth_only phase mail-from match !auth <users> reject "550 …"
"""

from __future__ import annotations

import smtplib
import ssl

from harness.smtpd import Outcome, Root, free_port, wait_for

from ..table.backends import MAPPING
from .conftest import FILTER_CMD, metric, scrape, wait_exporter


def send_from(source: str, port: int, sender: str, rcpt: str,
              auth: tuple[str, str] | None = None) -> Outcome:
    """One transaction from a given loopback source address."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20,
                      source_address=(source, 0)) as client:
        client.ehlo()
        if auth is not None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            client.starttls(context=context)
            client.ehlo()
            client.login(*auth)
        code, text = client.mail(sender)
        if code != 250:
            return Outcome(code, text.decode(errors="replace"), "mail")
        code, text = client.rcpt(rcpt)
        if code != 250:
            return Outcome(code, text.decode(errors="replace"), "rcpt")
        code, text = client.data(b"Subject: seed\r\n\r\nhello\r\n")
        return Outcome(code, text.decode(errors="replace"), "data")


def test_trusted_bypass_and_auth_only(any_root: Root, workdir, smtpd, sink) -> None:  # type: ignore[no-untyped-def]
    host, inside = workdir(any_root)
    (host / "trusted").write_text("# sources that need no AUTH\n127.0.0.1\n")
    (host / "users").write_text("alice\n")
    port, exporter = free_port(), free_port()
    listener = f"listen on 127.0.0.1 port {port} filter incoming"
    head = ""
    if any_root.chrooted:
        crt, key = any_root.pki()
        head = (f'pki mx.test cert "{crt}"\npki mx.test key "{key}"\n'
                f'table creds {{ alice = "{any_root.crypt("Alice-Pass")}", '
                f'bob = "{any_root.crypt("Bob-Pass")}" }}\n')
        listener += " tls pki mx.test auth-optional <creds> hostname mx.test"
    conf = head + f"""
table trusted pyos-map:{inside}/trusted
table users pyos-map:{inside}/users
filter trusted phase mail-from match src <trusted> bypass
filter auth_only phase mail-from match !auth <users> reject "550 5.7.1 Authentication required"
filter prometheus proc-exec "{FILTER_CMD.format(port=exporter)}"
filter incoming chain {{ trusted, auth_only, prometheus }}
{listener}
action "out" relay host smtp://127.0.0.1:{sink.port}
match from any for domain "example.net" action "out"
"""
    server = smtpd(any_root, conf, {"pyos-map": MAPPING})
    server.start(ready_tables=("trusted", "users"), port=port)
    wait_exporter(exporter)

    trusted = send_from("127.0.0.1", port, "a@client.test", "trusted@example.net")
    assert trusted.accepted, trusted
    stranger = send_from("127.0.0.2", port, "b@client.test", "stranger@example.net")
    assert (stranger.stage, stranger.code) == ("mail", 550), stranger
    assert "Authentication required" in stranger.text
    expected = ["trusted@example.net"]
    if any_root.chrooted:  # AUTH needs inbound TLS: 7.6 only
        alice = send_from("127.0.0.2", port, "alice@client.test", "alice@example.net",
                          auth=("alice", "Alice-Pass"))
        assert alice.accepted, alice
        bob = send_from("127.0.0.2", port, "bob@client.test", "bob@example.net",
                        auth=("bob", "Bob-Pass"))
        assert (bob.stage, bob.code) == ("mail", 550), bob  # authenticated, not in <users>
        expected.append("alice@example.net")
    assert wait_for(lambda: sorted(sink.recipients()) == sorted(expected)), server.log()

    log = server.log().lower()  # 6.8 writes NETADDR, 7.6 netaddr
    # the builtin filters asked our Python tables (smtpd -T lookup)
    assert 'match "127.0.0.1" as netaddr in table proc:trusted -> true' in log
    assert 'match "127.0.0.2" as netaddr in table proc:trusted -> false' in log
    if any_root.chrooted:
        assert 'match "alice" as string in table proc:users -> true' in log
        assert 'match "bob" as string in table proc:users -> false' in log
    # and filter-prometheus, last in the chain, saw the builtin rejections (their reports
    # reach it asynchronously: the last one may still be on its way)
    rejected = 1 if not any_root.chrooted else 2
    assert wait_for(lambda: metric(scrape(exporter), "smtpd_filter_rejections_total",
                                   direction="smtp-in", phase="mail-from",
                                   code="550") == rejected, timeout=10), scrape(exporter)
    assert server.running()
