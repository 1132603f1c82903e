"""Debian 12's real smtpd 6.8 while table-procexec restarts its child: a mail sent right
after the child died waits for the new child (within the deadline) and is delivered, where
the bridge used to answer -1 for the whole back-off; a child that keeps crashing still gets
the mail a 4xx within the deadline, smtpd keeping its pid throughout."""

from __future__ import annotations

import os
import re
import signal

from harness.smtpd import Root, descendants, free_port, maildir_messages, send, wait_for

from .bridged import bridge_backend, install_child, table_line

DEADLINE = 5.0


def test_mail_after_a_crash_waits_for_the_new_child(host_root: Root, workdir, smtpd) -> None:
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
                              handshake_timeout=DEADLINE)
    port = free_port()
    conf = table_line("users", f"{inside}/fault_table.py {inside}/mode {inside}/users") + f"""
listen on 127.0.0.1 port {port}
action "local" maildir "{inside}/maildir/%{{user.username}}" userbase <users>
match from any for domain "local.test" action "local"
"""
    server = smtpd(host_root, conf, backends)
    server.start(ready_tables=("users",), port=port)
    pid = server.pid
    mailbox = host / "maildir" / "vuser"
    delivered = 0

    def deliver() -> None:
        nonlocal delivered
        outcome = send(port, "a@client.test", "vuser@local.test")
        assert outcome.accepted, (outcome, server.log())
        delivered += 1
        assert wait_for(lambda: len(maildir_messages(mailbox)) == delivered, timeout=30), \
            server.log()

    def ready_children(count: int) -> list[int]:
        pattern = r"table users\[\d+\]: ready: child pid (\d+)"
        assert wait_for(lambda: len(re.findall(pattern, server.log())) >= count,
                        timeout=30), server.log()
        return [int(p) for p in re.findall(pattern, server.log())]

    def kill_newest(count: int) -> int:
        child = ready_children(count)[count - 1]
        assert child in descendants(server.pid)  # ours to kill
        os.kill(child, signal.SIGKILL)
        assert wait_for(lambda: f"child pid {child} was killed by SIGKILL" in server.log(),
                        timeout=30), server.log()
        return child

    deliver()
    # four children killed before any answered: the next one starts 2 s later
    killed = [kill_newest(n) for n in (1, 2, 3, 4)]
    deliver()  # sent at once: its userinfo lookup waits for the 5th child, no 4xx
    deliver()
    assert ready_children(5)[4] not in killed
    log = server.log()
    assert "waits for the next child (starting in" in log
    assert "answering -1" not in log

    # a child that keeps dying at start: 4xx within the deadline, never a hang
    mode.write_text("crash-start")
    kill_newest(5)
    outcome = send(port, "a@client.test", "vuser@local.test", timeout=DEADLINE * 4)
    assert outcome.stage == "rcpt" and 400 <= outcome.code < 500, (outcome, server.log())
    assert server.running() and server.pid == pid
    mode.write_text("ok")
    ready_children(6)
    deliver()  # the sender's retry
    assert len(maildir_messages(mailbox)) == 4
    assert server.running() and server.pid == pid
