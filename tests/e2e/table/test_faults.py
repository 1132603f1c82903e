"""Faults in a Python backend never take real smtpd down and never bounce mail."""

from __future__ import annotations

import os
from pathlib import Path

from harness.smtpd import Root, Smtpd, free_port, maildir_messages, port_open, send, wait_for

from .backends import FAULTY


def _banner(port: int) -> bool:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.noop()[0] == 250


def test_faults_tempfail_then_deliver(any_root: Root, workdir, smtpd) -> None:
    host, inside = workdir(any_root)
    (host / "home").mkdir()
    (host / "maildir").mkdir()
    os.chown(host / "maildir", 65534, 65534)
    mode = host / "mode"
    mode.write_text("ok")
    mode.chmod(0o644)
    backends = {"pyos-faulty": FAULTY}
    port = free_port()
    conf = f"""
table users pyos-faulty:{inside}/mode
listen on 127.0.0.1 port {port}
action "local" maildir "{inside}/maildir/%{{user.username}}" userbase <users>
match from any for domain "local.test" action "local"
"""
    server: Smtpd = smtpd(any_root, conf, backends)
    server.start(ready_tables=("users",), port=port)
    pid = server.pid
    mailbox: Path = host / "maildir" / "vuser"

    assert send(port, "a@client.test", "vuser@local.test").accepted
    tempfailed = 0
    for fault in ("raise", "hang", "invalid", "raise"):
        mode.write_text(fault)
        outcome = send(port, "a@client.test", "vuser@local.test")
        assert outcome.stage == "rcpt" and 400 <= outcome.code < 500, (fault, outcome)
        tempfailed += 1
        # smtpd is the same process and still serves the next session
        assert server.running() and server.pid == pid, server.log()
        assert port_open(port) and _banner(port), server.log()
    mode.write_text("ok")
    # the senders retry their tempfailed mails: every one is delivered now
    for _ in range(tempfailed):
        assert send(port, "a@client.test", "vuser@local.test").accepted
    assert wait_for(lambda: len(maildir_messages(mailbox)) == 1 + tempfailed), server.log()
    assert server.running() and server.pid == pid
    log = server.log()
    assert "simulated backend bug" in log  # the reason reached smtpd's log
    assert "no answer within 1.0s" in log
    assert "invalid answer" in log
