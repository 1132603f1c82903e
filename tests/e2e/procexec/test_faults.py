"""Fault runs on Debian 12's real smtpd 6.8: a child behind table-procexec that writes
garbage, hangs, is killed mid-request and crash-loops. Every time the SMTP client gets a
4xx, smtpd keeps its pid and serves the next session, and every tempfailed mail is
delivered once the child is well again."""

from __future__ import annotations

import os
import re
import signal
import smtplib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.smtpd import (
    Outcome,
    Root,
    Smtpd,
    descendants,
    free_port,
    maildir_messages,
    port_open,
    send,
    wait_for,
)

from .bridged import bridge_backend, install_child, table_line

DEADLINE = 2.0


class Run:
    """One smtpd for the whole run; counts what was delivered and what was tempfailed."""

    def __init__(self, server: Smtpd, port: int, mode: Path, mailbox: Path) -> None:
        self.server, self.port, self.mode, self.mailbox = server, port, mode, mailbox
        self.pid = server.pid
        self.accepted = 0
        self.tempfailed = 0

    def set(self, mode: str) -> None:
        self.mode.write_text(mode)

    def deliver(self) -> None:
        """A session that must succeed; waits for the delivery (whose userinfo lookup must
        be over before the next fault is switched on)."""
        outcome = send(self.port, "a@client.test", "vuser@local.test")
        assert outcome.accepted, (outcome, self.server.log())
        self.accepted += 1
        assert wait_for(lambda: len(maildir_messages(self.mailbox)) == self.accepted,
                        timeout=30), self.server.log()
        self.same_smtpd()

    def tempfail(self, outcome: Outcome | None = None) -> None:
        outcome = outcome or send(self.port, "a@client.test", "vuser@local.test")
        assert outcome.stage == "rcpt" and 400 <= outcome.code < 500, (outcome,
                                                                      self.server.log())
        self.tempfailed += 1
        self.same_smtpd()

    def same_smtpd(self) -> None:
        assert self.server.running() and self.server.pid == self.pid, self.server.log()
        assert port_open(self.port)
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
            assert client.noop()[0] == 250

    def wait_log(self, pattern: str, count: int = 1) -> list[str]:
        assert wait_for(lambda: len(re.findall(pattern, self.server.log())) >= count,
                        timeout=30), f"{pattern!r} not logged:\n{self.server.log()}"
        return re.findall(pattern, self.server.log())


def test_faults_tempfail_then_every_mail_is_delivered(host_root: Root, workdir,
                                                      smtpd) -> None:
    host, inside = workdir(host_root)
    (host / "home").mkdir()
    (host / "maildir").mkdir()
    os.chown(host / "maildir", 65534, 65534)
    (host / "users").write_text(f"vuser 65534:65534:{inside}/home\n")
    mode = host / "mode"
    mode.write_text("ok")
    mode.chmod(0o644)
    install_child(host, "fault_table.py")
    backends = bridge_backend(host_root, host, protocol="native", deadline=DEADLINE,
                              max_backoff=1)
    port = free_port()
    conf = table_line("users", f"{inside}/fault_table.py {inside}/mode {inside}/users") + f"""
listen on 127.0.0.1 port {port}
action "local" maildir "{inside}/maildir/%{{user.username}}" userbase <users>
match from any for domain "local.test" action "local"
"""
    server = smtpd(host_root, conf, backends)
    server.start(ready_tables=("users",), port=port)
    run = Run(server, port, mode, host / "maildir" / "vuser")
    run.deliver()

    # 1. garbage instead of a reply: -1 at once, a log line naming the table and the line
    run.set("garbage")
    run.tempfail()
    line = run.wait_log(r"table users\[\d+\]: malformed line from the child.*")[0]
    assert "'this is not a reply'" in line
    run.set("ok")
    run.deliver()

    # 2. hung past the deadline: -1; the late reply is recognised by its id and dropped
    run.set(f"hang:{DEADLINE * 2}")
    run.tempfail()
    run.wait_log(r"table users\[\d+\]: late reply to request \w+ discarded")
    run.set("ok")
    run.deliver()

    # 3. killed (by its PID) while smtpd waits for its answer, then a crash loop
    run.set("hang:60")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(send, port, "a@client.test", "vuser@local.test")
        child = int(run.wait_log(r"fault_table pid (\d+): hanging 60")[0])
        assert child in descendants(server.pid)  # ours to kill
        run.set("crash-start")
        os.kill(child, signal.SIGKILL)
        run.tempfail(waiting.result(timeout=30))
    run.wait_log(rf"child pid {child} was killed by SIGKILL")
    run.wait_log(r"crashing at start")
    run.tempfail()  # the child is down or dies in its handshake: -1 meanwhile
    run.wait_log(r"crashing at start", count=2)
    run.tempfail()
    ready_before = len(run.wait_log(r"table users\[\d+\]: ready: child pid"))
    run.set("ok")
    run.wait_log(r"table users\[\d+\]: ready: child pid", count=ready_before + 1)
    run.deliver()

    # the senders retry every tempfailed mail: each one is delivered now
    assert run.tempfailed == 5
    for _ in range(run.tempfailed):
        run.deliver()
    assert len(maildir_messages(run.mailbox)) == 4 + 5  # 4 good sessions + 5 retried
    log = server.log()
    assert "no reply from the child within 2s" in log
    assert "exited with status 3 during the handshake" in log
