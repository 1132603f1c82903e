"""table-procexec on Debian 12's real smtpd 6.8, in front of children in both line
dialects and two languages: aliases, domains, userinfo and credentials in real SMTP
sessions (credentials: relay `auth <creds>`, seen by an AUTH-requiring sink)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from harness.smtpd import Root, free_port, maildir_messages, send, wait_for

from ..paths import REPO
from .bridged import bridge_backend, install_child, table_line
from .conftest import AuthSink

TABLES = ("domains", "aliases", "users", "creds")
CHILDREN = {
    # (a) Python, the library, forced to the 7.6 protocol
    "python-native": ("native_table.py", "speaks the 0.1 protocol",
                      r"table {t} child\[\d+\]: table {t}\[\d+\]: ready: native protocol"),
    # (b) Python, the seed's 2020 module API, forced to the 2020 dialect: detected
    "python-2020": ("table_2020.py", "spoken to in the 2020 dialect",
                    r"table {t}\[\d+\]: the child answers in the 2020 dialect"),
    # (c) POSIX sh, the 7.6 protocol
    "shell-native": ("shell_table.sh", "speaks the 0.1 protocol",
                     r"table {t} child\[\d+\]: shell table {t}: pid"),
}


def _files(host: Path, inside: str) -> None:
    (host / "domains").write_text("local.test\n")
    (host / "aliases").write_text("root vuser\npostmaster vuser\n")
    (host / "users").write_text(f"vuser 65534:65534:{inside}/home\n")
    (host / "creds").write_text("bob bob:s3cret\n")
    (host / "home").mkdir()
    (host / "maildir").mkdir()
    os.chown(host / "maildir", 65534, 65534)


@pytest.mark.parametrize("kind", list(CHILDREN))
def test_bridge_serves_real_smtpd_68(kind: str, host_root: Root, workdir, smtpd,
                                     auth_sink: AuthSink) -> None:
    program, dialect, tablename_proof = CHILDREN[kind]
    host, inside = workdir(host_root)
    _files(host, inside)
    install_child(host, program)
    # a 0.1 child gets all the time it needs to register (a loaded host can be slow to
    # start Python); the 2020 one is detected by its silence, quickly
    backends = bridge_backend(host_root, host, handshake_timeout=1 if "2020" in kind else 10)
    port = free_port()
    conf = "".join(table_line(t, f"{inside}/{program} {inside}/{t}") for t in TABLES) + f"""
listen on 127.0.0.1 port {port}
action "local" maildir "{inside}/maildir/%{{user.username}}" alias <aliases> userbase <users>
action "out" relay host smtp+tls://bob@127.0.0.1:{auth_sink.port} auth <creds> tls no-verify
match from any for domain <domains> action "local"
match from any for domain "relay.test" action "out"
"""
    server = smtpd(host_root, conf, backends)
    server.start(ready_tables=TABLES, port=port)
    pid = server.pid

    # domain check + alias lookup (root -> vuser) + userinfo lookup -> maildir delivery
    assert send(port, "a@client.test", "root@local.test").accepted
    mailbox = host / "maildir" / "vuser"
    assert wait_for(lambda: len(maildir_messages(mailbox)) == 1), server.log()
    assert "Subject: test" in maildir_messages(mailbox)[0]
    # no alias, no such user: a definite 5xx (not-found maps to 0, not to -1)
    ghost = send(port, "a@client.test", "ghost@local.test")
    assert ghost.stage == "rcpt" and 500 <= ghost.code < 600, ghost
    # domain check not-found: no rule matches
    other = send(port, "a@client.test", "someone@other.test")
    assert (other.stage, other.code) == ("rcpt", 550), other
    # credentials lookup of label "bob": the sink sees AUTH PLAIN bob / s3cret
    assert send(port, "a@client.test", "friend@relay.test").accepted
    assert wait_for(lambda: auth_sink.messages, timeout=30), server.log()
    assert auth_sink.logins == [(b"bob", b"s3cret")]
    assert auth_sink.messages == [("a@client.test", ["friend@relay.test"], True)]

    log = server.log()
    for table in TABLES:
        assert re.search(rf"table {table}\[\d+\]: ready: child pid \d+ {dialect}", log), log
    # the 0.1 children received config|tablename (the 2020 one was detected instead)
    assert re.search(tablename_proof.format(t="aliases"), log), log
    # the credentials value reaches no line of the bridge or its child (smtpd's own
    # `-T lookup` trace does print it: that is smtpd's business)
    ours = [line for line in log.splitlines() if line.startswith("table ")]
    assert ours and not any("s3cret" in line for line in ours)
    assert server.running() and server.pid == pid


def test_seed_example_in_the_2020_dialect(host_root: Root, workdir, smtpd, sink) -> None:
    """examples/seed_table.py, its dispatch() forced to the 2020 dialect, behind the
    bridge: the same configuration as the seed's direct test."""
    host, inside = workdir(host_root)
    source = (REPO / "examples" / "seed_table.py").read_text()
    assert "    table.dispatch()\n" in source
    (host / "seed_table.py").write_text(
        "#!/usr/bin/python3\n" + source.split("\n", 1)[1].replace(
            "    table.dispatch()\n", '    table.dispatch(protocol="2020")\n'))
    (host / "seed_table.py").chmod(0o755)
    backends = bridge_backend(host_root, host, handshake_timeout=1)
    port = free_port()
    conf = table_line("seed", f"{inside}/seed_table.py") + f"""
listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:{sink.port}
action "fwd" forward-only alias <seed>
match from any for rcpt-to <seed> action "out"
match from any for domain "seed.test" action "fwd"
"""
    server = smtpd(host_root, conf, backends)
    server.start(ready_tables=("seed",), port=port)
    assert send(port, "a@client.test", "gilles@poolp.org").accepted  # check mailaddr
    assert send(port, "a@client.test", "root@seed.test").accepted  # lookup alias
    assert wait_for(lambda: sink.recipients() == ["gilles@poolp.org"] * 2), server.log()
    nobody = send(port, "a@client.test", "ghost@seed.test")
    assert nobody.stage == "rcpt" and nobody.code >= 500, nobody
    log = server.log()
    assert "the child answers in the 2020 dialect: keeping it" in log
    assert server.running()

