"""Hostile names on a real smtpd: a table whose name holds ``%`` (the imsg OPEN name on
6.8, ``config|tablename`` on 7.6) is served and logged as text (issue 9, defect 4)."""

from __future__ import annotations

import os
from pathlib import Path

from harness.smtpd import Root, Smtpd, free_port, maildir_messages, send, wait_for

from .backends import FAULTY

NAME = "u%s%zb%d"  # smtpd.conf takes no ( ) in a <table> reference


def test_percent_in_the_table_name(any_root: Root, workdir, smtpd) -> None:
    host, inside = workdir(any_root)
    (host / "home").mkdir()
    (host / "maildir").mkdir()
    os.chown(host / "maildir", 65534, 65534)
    mode = host / "mode"
    mode.write_text("raise")
    mode.chmod(0o644)
    port = free_port()
    conf = f"""
table "{NAME}" pyos-faulty:{inside}/mode
listen on 127.0.0.1 port {port}
action "local" maildir "{inside}/maildir/%{{user.username}}" userbase <{NAME}>
match from any for domain "local.test" action "local"
"""
    server: Smtpd = smtpd(any_root, conf, {"pyos-faulty": FAULTY})
    server.start(ready_tables=(NAME,), port=port)  # its "ready" line is logged whole
    outcome = send(port, "a@client.test", "vuser@local.test")
    assert outcome.stage == "rcpt" and 400 <= outcome.code < 500, outcome  # the bug: 4xx
    mode.write_text("ok")
    assert send(port, "a@client.test", "vuser@local.test").accepted
    mailbox: Path = host / "maildir" / "vuser"
    assert wait_for(lambda: len(maildir_messages(mailbox)) == 1), server.log()
    assert server.running()
    log = server.log()
    assert f"table {NAME}[" in log and "simulated backend bug" in log, log
    assert "Logging error" not in log and "Traceback" not in log, log
