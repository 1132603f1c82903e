"""The packages on a real smtpd, configured only with the lines the docs give.

In a clean chroot of each suite with the four packages installed by apt: a Python table
in /usr/libexec/opensmtpd (the admin's own file, importing python3-opensmtpd), aliases
from table-consul's embedded store changed with its `kv` command while smtpd runs,
filter-prometheus on the listener and scraped, table-procexec bridging a line-protocol
table on smtpd 6.8; then `apt-get remove` under the running smtpd, and `apt-get purge`.
smtpd's environment has no PYTHONPATH: everything comes from the packages.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from pathlib import Path

from harness.smtpd import Outcome, Root, Smtpd, free_port, maildir_messages, send, wait_for

from ..conftest import Sink
from .chroots import DebChroot

WORK = "/var/tmp/pyos-deb"
SMTPD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
PRODUCTS = ("table-consul", "filter-prometheus", "table-procexec")

# The admin's table, as README's example: /usr/libexec/opensmtpd/table-mine
MINE = f'''#!/usr/bin/python3
from opensmtpd.table import Table

table = Table()
USERS = {{"alice": "65534:65534:{WORK}/home", "bob": "65534:65534:{WORK}/home"}}


@table.check("domain")
def local(key):
    return key == "deb.test"


@table.lookup("userinfo")
def userinfo(key):
    return USERS.get(key)


table.run()
'''

# A line-protocol (smtpd 7.6) table that smtpd 6.8 uses through table-procexec
BRIDGED = '''#!/usr/bin/python3
from opensmtpd.table import Table

table = Table()


@table.check("domain")
def bridged(key):
    return key == "bridged.test"


table.run()
'''
BRIDGED_INSIDE = "/usr/local/libexec/pyos-bridged"

CONF = """
table domains mine
table users mine
table aliases consul:/etc/mail/table-consul.conf
{bridged_table}
filter "prometheus" proc-exec "filter-prometheus -exporter 127.0.0.1:{exporter}"
listen on 127.0.0.1 port {port} filter "prometheus"
action "local" maildir "{work}/maildir/%{{user.username}}" alias <aliases> userbase <users>
match from any for domain <domains> action "local"
{bridged_match}
"""


def _prepare(chroot: DebChroot) -> Path:
    work = chroot.path / WORK.lstrip("/")
    shutil.rmtree(work, ignore_errors=True)
    (work / "home").mkdir(parents=True)
    (work / "maildir").mkdir()
    os.chown(work / "maildir", 65534, 65534)
    for path in (work, work / "home"):
        path.chmod(0o755)
    return work


def _conf(chroot: DebChroot, port: int, exporter: int) -> str:
    bridged = chroot.series == "6.8"  # the bridge is for smtpd <= 7.5
    if bridged:
        child = chroot.path / BRIDGED_INSIDE.lstrip("/")
        child.parent.mkdir(parents=True, exist_ok=True)
        child.write_text(BRIDGED)
        child.chmod(0o755)
    return CONF.format(
        port=port, exporter=exporter, work=WORK,
        bridged_table=f'table bridged "procexec:{BRIDGED_INSIDE}"' if bridged else "",
        bridged_match='match from any for domain <bridged> action "local"' if bridged else "")


def _accepted(port: int, rcpt: str, timeout: float = 30.0) -> Outcome:
    """Send like a real sender: retry on 4xx (a table still syncing), never a 5xx."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = send(port, "sender@client.test", rcpt)
        if outcome.accepted or not 400 <= outcome.code < 500 or time.monotonic() > deadline:
            return outcome
        time.sleep(0.5)


def _delivered(work: Path, user: str, count: int) -> bool:
    return len(maildir_messages(work / "maildir" / user)) == count


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def test_packages_serve_a_real_smtpd_and_leave_cleanly(deb_chroot: DebChroot,
                                                       tmp_path: Path) -> None:
    chroot = deb_chroot
    version = chroot.run("/usr/sbin/smtpd", "-h", check=False)
    assert f"OpenSMTPD {chroot.series}." in version.stdout + version.stderr, version
    for package in ("python3-opensmtpd", "opensmtpd-table-consul",
                    "opensmtpd-filter-prometheus", "opensmtpd-table-procexec"):
        assert chroot.installed(package), package
    # what smtpd will run, run as its user: each imports what it needs from the packages
    for product in PRODUCTS:
        line = chroot.run(f"/usr/libexec/opensmtpd/{product}", "--self-test",
                          user="opensmtpd").stdout
        assert line.startswith(f"{product} "), line
        assert "library /usr/lib/python3/dist-packages/opensmtpd" in line, line
        assert "without" not in line, line  # table-consul: httpx there too
    store = chroot.path / "var/lib/table-consul"
    assert (store.stat().st_mode & 0o777, store.stat().st_gid) == (
        0o750, int(chroot.run("getent", "group", "opensmtpd").stdout.split(":")[2]))

    work = _prepare(chroot)
    chroot.run("table-consul", "kv", "put", "aliases/alias/root", "alice")
    port, exporter = free_port(), free_port()
    root = Root(chroot.path, chroot.series)
    server = Smtpd(root, _conf(chroot, port, exporter), tmp_path / "smtpd.log", SMTPD_ENV,
                   backends={"mine": MINE})
    try:
        server.start(ready_tables=("domains", "users"), port=port)
        pid = server.pid

        # the Python table, an alias from the embedded store, maildir delivery
        outcome = _accepted(port, "root@deb.test")
        assert outcome.accepted, f"{outcome}\n{server.log()}"
        assert wait_for(lambda: _delivered(work, "alice", 1)), server.log()

        # the alias changes with the kv command: the next mail follows, no restart
        mark = len(server.log())
        chroot.run("table-consul", "kv", "put", "aliases/alias/root", "bob")
        assert wait_for(lambda: "synced 'aliases/'" in server.log()[mark:]), server.log()
        outcome = send(port, "sender@client.test", "root@deb.test")
        assert outcome.accepted, f"{outcome}\n{server.log()}"
        assert wait_for(lambda: _delivered(work, "bob", 1)), server.log()

        if chroot.series == "6.8":  # table-procexec in front of a 7.6 line-protocol table
            outcome = _accepted(port, "alice@bridged.test")
            assert outcome.accepted, f"{outcome}\n{server.log()}"
            assert wait_for(lambda: _delivered(work, "alice", 2)), server.log()

        # filter-prometheus, found by smtpd in /usr/libexec/opensmtpd, counted the sessions
        metrics = _scrape(exporter)
        sessions = [line for line in metrics.splitlines()
                    if line.startswith('smtpd_sessions_total{direction="smtp-in"')]
        assert sessions and float(sessions[0].split()[-1]) >= 2, metrics
        assert 'smtpd_transactions_committed_total{direction="smtp-in"}' in metrics

        # removing the packages under a running smtpd: it keeps serving its other tables
        chroot.run("apt-get", "remove", "-y", "-q", "opensmtpd-table-consul",
                   "opensmtpd-filter-prometheus", "opensmtpd-table-procexec")
        for product in PRODUCTS:
            assert not (chroot.path / f"usr/libexec/opensmtpd/{product}").exists()
        assert (chroot.path / "etc/mail/table-consul.conf").exists()  # remove keeps it
        assert (store / "kv.sqlite3").exists()  # and the admin's data
        assert server.running() and server.pid == pid, server.log()
        before = len(maildir_messages(work / "maildir" / "alice"))
        outcome = send(port, "sender@client.test", "alice@deb.test")
        assert outcome.accepted, f"{outcome}\n{server.log()}"
        assert wait_for(lambda: _delivered(work, "alice", before + 1)), server.log()

        # purge: the conffile and the store go; smtpd still runs
        chroot.run("apt-get", "purge", "-y", "-q", "opensmtpd-table-consul")
        assert not (chroot.path / "etc/mail/table-consul.conf").exists()
        assert not store.exists()
        assert not chroot.known("opensmtpd-table-consul")
        assert chroot.installed("python3-opensmtpd")
        assert server.running() and server.pid == pid, server.log()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


# The package's launcher with prometheus_client made unimportable: a fake, since the
# package depends on python3-prometheus-client (pip users can lack the extra).
FAKE_NO_CLIENT = '''#!/usr/bin/python3 -I
import sys

sys.modules["prometheus_client"] = None  # import fails as if it were not installed
from opensmtpd.prometheus.main import main

sys.exit(main())
'''


def test_filter_prometheus_without_its_client_lets_mail_through(
        deb_chroot: DebChroot, tmp_path: Path, sink: Sink) -> None:
    chroot = deb_chroot
    port = free_port()
    conf = f"""
filter "prometheus" proc-exec "filter-fake-no-client -exporter 127.0.0.1:{free_port()}"
listen on 127.0.0.1 port {port} filter "prometheus"
action "out" relay host smtp://127.0.0.1:{sink.port}
match from any for domain "relay.test" action "out"
"""
    launcher = chroot.path / "usr/libexec/opensmtpd/filter-fake-no-client"
    launcher.write_text(FAKE_NO_CLIENT)
    launcher.chmod(0o755)
    server = Smtpd(Root(chroot.path, chroot.series), conf, tmp_path / "smtpd.log", SMTPD_ENV)
    try:
        server.start(port=port)
        outcome = send(port, "sender@client.test", "someone@relay.test")
        assert outcome.accepted, f"{outcome}\n{server.log()}"
        assert wait_for(lambda: sink.recipients() == ["someone@relay.test"]), server.log()
        lines = [line for line in server.log().splitlines() if "prometheus_client" in line]
        assert len(lines) == 1 and "pip install 'py-opensmtpd[prometheus]'" in lines[0], lines
        assert "Traceback" not in server.log()
        assert server.running()
    finally:
        server.stop()
        launcher.unlink()
