"""A Python table serves real smtpd 6.8 (imsg) and 7.6 (native) for every service."""

from __future__ import annotations

import os
from pathlib import Path

from harness.smtpd import Root, free_port, maildir_messages, send, wait_for

from .backends import MAPPING, seed


def _files(host: Path, inside: str) -> None:
    (host / "nets").write_text("127.0.0.0/8\n")
    (host / "domains").write_text("# local domains\nlocal.test\n*.wild.test\n")
    (host / "rcpts").write_text("@relay.test\nboss@partner.test\n")
    (host / "aliases").write_text("root: vuser\npostmaster vuser\n")
    (host / "users").write_text(f"vuser 65534:65534:{inside}/home\n")
    (host / "home").mkdir()
    (host / "maildir").mkdir()
    os.chown(host / "maildir", 65534, 65534)


def test_mapping_table_serves_every_lookup(any_root: Root, workdir, smtpd, sink) -> None:
    host, inside = workdir(any_root)
    _files(host, inside)
    backends = {"pyos-map": MAPPING}
    port = free_port()
    tables = ("nets", "domains", "rcpts", "aliases", "users")
    conf = "".join(f"table {t} pyos-map:{inside}/{t}\n" for t in tables) + f"""
listen on 127.0.0.1 port {port}
action "local" maildir "{inside}/maildir/%{{user.username}}" alias <aliases> userbase <users>
action "out" relay host smtp://127.0.0.1:{sink.port}
match from src <nets> for domain <domains> action "local"
match from any for rcpt-to <rcpts> action "out"
"""
    server = smtpd(any_root, conf, backends)
    server.start(ready_tables=tables, port=port)

    # netaddr (CIDR) + domain + alias root -> vuser + userinfo vuser -> maildir delivery
    assert send(port, "a@client.test", "root@local.test").accepted
    # domain wildcard *.wild.test
    assert send(port, "a@client.test", "postmaster@mx.wild.test").accepted
    mailbox = host / "maildir" / "vuser"
    assert wait_for(lambda: len(maildir_messages(mailbox)) == 2), server.log()
    # alias and userinfo both not found: a definite 5xx
    ghost = send(port, "a@client.test", "ghost@local.test")
    assert ghost.stage == "rcpt" and 500 <= ghost.code < 600, ghost
    # mailaddr @domain and user@domain -> relayed to the sink
    assert send(port, "a@client.test", "friend@relay.test").accepted
    assert send(port, "a@client.test", "boss@partner.test").accepted
    assert wait_for(lambda: sorted(sink.recipients()) == ["boss@partner.test",
                                                         "friend@relay.test"]), server.log()
    # nothing matches: 550, and only that
    stranger = send(port, "a@client.test", "someone@elsewhere.test")
    assert (stranger.stage, stranger.code) == ("rcpt", 550), stranger
    # the lookups really went to our backend (smtpd -T lookup)
    log = server.log()
    assert "table nets[" in log and "ready: " in log
    assert server.running()


def test_seed_example_unchanged(any_root: Root, workdir, smtpd, sink) -> None:
    backends = {"pyos-seed": seed()}
    port = free_port()
    conf = f"""
table seed pyos-seed
listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:{sink.port}
action "fwd" forward-only alias <seed>
match from any for rcpt-to <seed> action "out"
match from any for domain "seed.test" action "fwd"
"""
    server = smtpd(any_root, conf, backends)
    server.start(ready_tables=("seed",), port=port)
    # check: rcpt-to <seed> matches gilles@poolp.org
    assert send(port, "a@client.test", "gilles@poolp.org").accepted
    # lookup: alias root -> gilles@poolp.org, then re-matched by the check
    assert send(port, "a@client.test", "root@seed.test").accepted
    assert wait_for(lambda: sink.recipients() == ["gilles@poolp.org"] * 2
                    or sorted(sink.recipients()) == ["gilles@poolp.org"] * 2), server.log()
    # no alias for ghost (and no such system user): refused
    nobody = send(port, "a@client.test", "ghost@seed.test")
    assert nobody.stage == "rcpt" and nobody.code >= 500, nobody
    assert server.running()


def test_credentials_smtp_auth(chroot_root: Root, workdir, smtpd, sink) -> None:
    """SMTP AUTH against a Python credentials table (7.6: Debian 12's 6.8 has no inbound TLS)."""
    host, inside = workdir(chroot_root)
    (host / "creds").write_text(f"alice {chroot_root.crypt('Correct-Horse')}\n")
    chroot_root.pki()
    backends = {"pyos-map": MAPPING}
    port = free_port()
    conf = f"""
pki mx.test cert "/etc/ssl/pyos-e2e.crt"
pki mx.test key "/etc/ssl/pyos-e2e.key"
table creds pyos-map:{inside}/creds
listen on 127.0.0.1 port {port} tls pki mx.test auth <creds> hostname mx.test
action "out" relay host smtp://127.0.0.1:{sink.port}
match from any auth for domain "example.net" action "out"
"""
    server = smtpd(chroot_root, conf, backends)
    server.start(ready_tables=("creds",), port=port)
    ok = send(port, "alice@client.test", "bob@example.net", starttls=True,
              auth=("alice", "Correct-Horse"))
    assert ok.accepted, ok
    wrong = send(port, "alice@client.test", "bob@example.net", starttls=True,
                 auth=("alice", "wrong-password"))
    assert (wrong.stage, wrong.code) == ("auth", 535), wrong
    unknown = send(port, "x@client.test", "bob@example.net", starttls=True,
                   auth=("mallory", "Correct-Horse"))
    assert (unknown.stage, unknown.code) == ("auth", 535), unknown
    assert wait_for(lambda: sink.recipients() == ["bob@example.net"]), server.log()
    assert "Correct-Horse" not in server.log()
