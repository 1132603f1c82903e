"""Every failure is in the mail log under a daemonized smtpd (issue 13, item 1).

smtpd started as a service starts it (``smtpd -f CONF``, no -d) gives its tables
/dev/null as stderr (table-protocols.md §1.1): their reasons must reach syslog, facility
mail, under the table's name: a Python table, table-consul, the bridge (6.8) relaying its
child's lines; a filter's stderr is a pipe smtpd logs itself, under the filter's name.
A real rsyslogd (Debian's) writes mail.* to a file; smtpd, its tables and its filter reach
it through a private /dev/log (harness/syslog.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from harness.smtpd import Root, free_port, send, wait_for

from opensmtpd.install import launcher_source

from .procexec.bridged import bridge_backend, table_line
from .table.backends import SHEBANG

RAISING_TABLE = SHEBANG + """\
from opensmtpd.table import Table

table = Table()


@table.lookup("alias")
def alias(key, request):
    raise RuntimeError(f"reason-{request.table}-{key}")


@table.check("auth")
def auth(key):
    user, _, password = key.partition(":")
    raise RuntimeError(f"cannot check {user} with {password}")


table.run()
"""

RAISING_FILTER = """\
from opensmtpd.filter import Filter

f = Filter("boom")


@f.on_phase("rcpt-to")
def rcpt_to(session, query):
    if "bomb@" in query.param:
        raise ValueError("reason-filter-bomb")


f.run()
"""

PASSWORD = "Sekr1t-Pass-4242"


def lines_of(log: str, *needles: str) -> list[str]:
    return [line for line in log.splitlines() if all(n in line for n in needles)]


def test_failures_reach_the_mail_log_of_a_daemonized_smtpd(  # type: ignore[no-untyped-def]
        any_root: Root, workdir, smtpd, sink, mail_log) -> None:
    host, inside = workdir(any_root)
    (host / "bad.conf").write_text("consistency = sometimes\n")
    (host / "boom_filter.py").write_text(RAISING_FILTER)
    for name in ("bad.conf", "boom_filter.py"):
        (host / name).chmod(0o644)
    tls = any_root.name != "6.8"  # Debian 12's 6.8 has no inbound TLS, hence no AUTH
    port = free_port()
    pki = ""
    listen = f"listen on 127.0.0.1 port {port} filter boom"
    if tls:
        crt, key = any_root.pki()
        pki = f'pki mx.test cert "{crt}"\npki mx.test key "{key}"\n'
        listen += " tls pki mx.test auth-optional <raising> hostname mx.test"
    conf = pki + f"""
table raising pyos-raise:{inside}/unused
table badconsul consul:{inside}/bad.conf
filter boom proc-exec "/usr/bin/python3 {inside}/boom_filter.py"
{listen}
action "raise" forward-only alias <raising>
action "consul" forward-only alias <badconsul>
action "out" relay host smtp://127.0.0.1:{sink.port}
match from any for domain "raise.test" action "raise"
match from any for domain "consul.test" action "consul"
match from any for domain "example.net" action "out"
"""
    backends = {"pyos-raise": RAISING_TABLE, "consul": launcher_source("consul")}
    ready = ["raising", "badconsul"]
    if any_root.name == "6.8":  # the bridge serves smtpd <= 7.5: a child that raises
        (host / "child.py").write_text(RAISING_TABLE)
        (host / "child.py").chmod(0o755)
        backends.update(bridge_backend(any_root, host))
        conf = table_line("bridged", f"/usr/bin/python3 {inside}/child.py") + conf + \
            'action "bridged" forward-only alias <bridged>\n' \
            'match from any for domain "bridge.test" action "bridged"\n'
        ready.append("bridged")
    server = smtpd(any_root, conf, backends, syslog=mail_log)
    server.flags = ()  # as a service runs it (-T lookup would trace auth keys itself)
    server.start(ready_tables=ready, port=port)
    assert server.process is None and server.namespace, "not daemonized"

    raised = send(port, "a@client.test", "root@raise.test", starttls=tls)
    assert (raised.stage, raised.code // 100) == ("rcpt", 4), raised
    broken = send(port, "a@client.test", "root@consul.test", starttls=tls)
    assert (broken.stage, broken.code // 100) == ("rcpt", 4), broken
    bomb = send(port, "a@client.test", "bomb@example.net", starttls=tls)
    assert bomb.accepted, bomb  # the filter's error policy: proceed
    if not tls:
        bridged = send(port, "a@client.test", "root@bridge.test")
        assert (bridged.stage, bridged.code // 100) == ("rcpt", 4), bridged
    if tls:
        auth = send(port, "alice@client.test", "bob@example.net", starttls=True,
                    auth=("alice", PASSWORD))
        assert (auth.stage, auth.code // 100) == ("auth", 4), auth

    def logged() -> bool:
        log = mail_log.text()
        return bool(lines_of(log, "table-raising[", "reason-raising-root")
                    and (tls or lines_of(log, "table-bridged[", "reason-bridged-root"))
                    and lines_of(log, "table-badconsul[", "configuration error")
                    and lines_of(log, "boom", "reason-filter-bomb")
                    and (not tls or lines_of(log, "table-raising[", "auth", "RuntimeError")))
    assert wait_for(logged, timeout=15), mail_log.text()
    log = mail_log.text()
    # the table's name is the ident; the reason is whole (file:line for the config)
    assert lines_of(log, "table-raising[", "handler raised RuntimeError: reason-raising-root")
    if not tls:  # the bridge's ident, then its child's line
        assert lines_of(log, "table-bridged[", "child[", "reason-bridged-root")
    assert lines_of(log, "table-badconsul[", f"configuration error: {inside}/bad.conf:1: "
                                             "consistency")
    # the first config error is already named (not the logger's "opensmtpd.consul")
    assert "opensmtpd.consul" not in log
    assert lines_of(log, "filter boom[", "rcpt-to handler", "ValueError", "reason-filter-bomb")
    assert PASSWORD not in log
    # facility mail, priority and ident as rsyslog parsed them: "host ident[pid]: message"
    assert re.search(r" table-raising\[\d+\]: lookup ", log), log
    assert server.running(), log


def test_a_bridge_usage_error_reaches_the_mail_log(mail_log, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """table-procexec started with stderr on /dev/null and a relative child command exits
    64 (smtpd 6.8 then refuses to start): the reason must be in the mail log, not lost."""
    result = mail_log.run([sys.executable, "-m", "opensmtpd.procexec", "table-foo -x"],
                          tmp_path / "dev", stdin=subprocess.DEVNULL)
    assert result.returncode == 64
    assert mail_log.wait_for("the child program must be an absolute path"), mail_log.text()
    assert re.search(r" table-procexec\[\d+\]: the child program must be an absolute path, "
                     r"not 'table-foo'", mail_log.text()), mail_log.text()
