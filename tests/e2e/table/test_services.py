"""A Python table serves real smtpd 6.8 (imsg), 7.6 and 7.9 (native) for every service."""

from __future__ import annotations

import os
import smtplib
import ssl
from pathlib import Path

from harness.smtpd import Outcome, Root, free_port, maildir_messages, send, wait_for

from .backends import AUTH, MAPPING, seed


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


def test_credentials_smtp_auth(line_root: Root, workdir, smtpd, sink) -> None:
    """SMTP AUTH against a Python credentials table (7.6, 7.9: Debian 12's 6.8 has no
    inbound TLS)."""
    host, inside = workdir(line_root)
    (host / "creds").write_text(f"alice {line_root.crypt('Correct-Horse')}\n")
    line_root.pki()
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
    server = smtpd(line_root, conf, backends)
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


def _auth_plain_then_send(port: int, user: str, password: str, rcpt: str) -> Outcome:
    """STARTTLS, one AUTH PLAIN (smtplib's login() would retry with LOGIN after a 535),
    then a message if it passed."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as client:
        client.ehlo()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo()
        client.user, client.password = user, password
        try:
            code, text = client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPAuthenticationError as exc:
            return Outcome(exc.smtp_code, str(exc.smtp_error), "auth")
        assert code == 235, (code, text)
        for stage, (code, reply) in (("mail", client.mail(f"{user}@client.test")),
                                     ("rcpt", client.rcpt(rcpt))):
            if code != 250:
                return Outcome(code, reply.decode(errors="replace"), stage)
        code, reply = client.data(b"Subject: auth\r\n\r\nhello\r\n")
        return Outcome(code, reply.decode(errors="replace"), "data")


def test_auth_service_password_case(line_root: Root, workdir, smtpd, sink) -> None:
    """An ``auth`` table (Table API, ``@table.check("auth")``) with a mixed-case password.

    smtpd 7.9 passes ``user:password`` as typed: 235, and a wrong password 535. smtpd 7.6
    lower-cases the key first (table.c, OpenSMTPD/OpenSMTPD#1268): the right password
    arrives as ``correct-horse`` and can never match, so it is refused 535 too.
    """
    host, inside = workdir(line_root)
    seen = host / "seen"
    seen.touch()
    seen.chmod(0o666)  # the table runs as user opensmtpd
    crt, key = line_root.pki()
    port = free_port()
    conf = f"""
pki mx.test cert "{crt}"
pki mx.test key "{key}"
table creds pyos-auth:{inside}/seen
listen on 127.0.0.1 port {port} tls pki mx.test auth <creds> hostname mx.test
action "out" relay host smtp://127.0.0.1:{sink.port}
match from any auth for domain "example.net" action "out"
"""
    server = smtpd(line_root, conf, {"pyos-auth": AUTH})
    server.start(ready_tables=("creds",), port=port)
    right = _auth_plain_then_send(port, "alice", "Correct-Horse", "bob@example.net")
    wrong = _auth_plain_then_send(port, "alice", "Wrong-Horse", "bob@example.net")
    assert (wrong.stage, wrong.code) == ("auth", 535), wrong
    version = {"7.6": "7.6.0", "7.9": "7.9.0"}[line_root.name]
    if line_root.name == "7.9":
        assert right.accepted, right
        assert wait_for(lambda: sink.recipients() == ["bob@example.net"]), server.log()
        arrived = "intact"
    else:
        assert (right.stage, right.code) == ("auth", 535), right
        arrived = "lower-cased"
    assert seen.read_text().splitlines() == [f"{arrived} native {version}",
                                             f"other native {version}"]
    assert server.running()
    # the password is in smtpd's own -T lookup trace, never in a line of the table's
    leaks = [line for line in server.log().splitlines()
             if "Correct-Horse" in line and 'lookup: match "alice:' not in line]
    assert not leaks, leaks
