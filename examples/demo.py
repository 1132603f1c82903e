"""The demo: a real smtpd on 127.0.0.1 using our tables and filter, then what happened.

- domains and users: a Python table (the Table API, an embedded mapping);
- aliases: table-consul on its embedded store (SQLite), changed live with `kv put`;
- filter-prometheus on the listener, scraped at the end.

Run as root on Debian with opensmtpd installed: `make demo` does both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from opensmtpd.consul.store import EmbeddedStore
from opensmtpd.install import launcher_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harness
from harness.smtpd import Root, Smtpd, free_port, maildir_messages, send, wait_for

WORK = "/var/tmp/pyos-demo"
KV = [str(Path(sys.executable).parent / "table-consul"), "kv", "-c", f"{WORK}/table-consul.conf"]

# A whole table backend: one Python file, two smtpd tables, any smtpd generation.
BACKEND = f'''#!/usr/bin/python3
from opensmtpd.table import Table, matches

DATA = {{
    "domains": ["demo.test", "*.demo.test"],
    "users": {{"alice": "65534:65534:{WORK}/home", "bob": "65534:65534:{WORK}/home"}},
}}
table = Table()


@table.check("domain")
def is_local(key, request):
    return matches(request.service, key, DATA[request.table])


@table.lookup("userinfo")
def userinfo(key, request):
    return DATA[request.table].get(key)


table.run()
'''

MAILS = [
    ("alice@demo.test", "a local user"),
    ("root@demo.test", "alias in the embedded store: root -> alice"),
    ("postmaster@mx.demo.test", "alias to alice and bob, wildcard domain"),
    ("ghost@demo.test", "no such user"),
    ("someone@elsewhere.test", "not a local domain"),
]
FILTER = "/usr/bin/python3 -m opensmtpd.prometheus"
METRICS = ("smtpd_sessions_total", "smtpd_transactions_committed_total",
           "smtpd_rcpt_to_total")


def kv(*args: str) -> None:
    print("  $ table-consul kv " + " ".join(args))
    subprocess.run([*KV, *args], check=True)


def mail(port: int, rcpt: str, why: str) -> None:
    outcome = send(port, "demo@client.test", rcpt, f"Subject: demo for {rcpt}\r\n\r\nhello\r\n")
    verdict = "accepted" if outcome.accepted else f"refused at {outcome.stage.upper()}"
    print(f"  {rcpt:26} ({why}): {verdict}: {outcome.code} {outcome.text}")


def prepare() -> Path:
    work = Path(WORK)
    shutil.rmtree(work, ignore_errors=True)
    (work / "home").mkdir(parents=True)
    (work / "maildir").mkdir()
    os.chown(work / "maildir", 65534, 65534)
    for path in (work, work / "home"):
        path.chmod(0o755)
    (work / "table-consul.conf").write_text(f"database = {WORK}/kv.sqlite3\n")
    return work


def report(server: Smtpd, work: Path, exporter: int) -> None:
    print("\nDelivered (maildir):")
    for user in ("alice", "bob"):
        for message in maildir_messages(work / "maildir" / user):
            subject = re.search(r"^Subject: (.*)$", message, re.M)
            print(f"  {user}: {subject.group(1) if subject else '?'}")
    print("\nWhat smtpd asked the tables (smtpd -T lookup):")
    for line in server.log().splitlines():
        if "lookup:" in line and "table proc:" in line:
            print("  " + line.strip())
    print(f"\nfilter-prometheus, http://127.0.0.1:{exporter}/metrics (non-zero excerpt):")
    with urllib.request.urlopen(f"http://127.0.0.1:{exporter}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(METRICS) and not line.endswith(" 0.0"):
                print("  " + line)


def main() -> int:
    if os.geteuid() != 0 or not Path("/usr/sbin/smtpd").exists():
        print("demo: needs root and Debian's opensmtpd (run `make demo`)", file=sys.stderr)
        return 1
    root = Root(Path("/"), "host")
    root.install_library()
    work = prepare()
    port, exporter = free_port(), free_port()
    conf = f"""
table domains pyos-demo
table users pyos-demo
table aliases consul:{WORK}/table-consul.conf
filter prometheus proc-exec "{FILTER} -exporter 127.0.0.1:{exporter}"
listen on 127.0.0.1 port {port} filter prometheus
action "local" maildir "{WORK}/maildir/%{{user.username}}" alias <aliases> userbase <users>
match from any for domain <domains> action "local"
"""
    print(f"smtpd.conf:{conf}")
    log = Path(tempfile.mkdtemp(prefix="pyos-demo-")) / "smtpd.log"
    server = Smtpd(root, conf, log, root.smtpd_env(), backends={
        "pyos-demo": BACKEND, "consul": launcher_source("consul")})
    try:
        kv("put", "aliases/alias/root", "alice")
        kv("put", "aliases/alias/postmaster", "alice, bob")
        server.start(ready_tables=("domains", "users"), port=port)
        version = subprocess.run(["/usr/sbin/smtpd", "-h"], capture_output=True, text=True)
        print(f"smtpd {(version.stdout + version.stderr).split()[2]} pid {server.pid} "
              f"listening on 127.0.0.1:{port}\n")
        for rcpt, why in MAILS:
            mail(port, rcpt, why)
        print("\nThe alias changes in the store; smtpd is not restarted:")
        kv("put", "aliases/alias/root", "bob")
        index = EmbeddedStore(f"{WORK}/kv.sqlite3").list().index
        wait_for(lambda: f"at index {index}" in server.log(), timeout=20)
        mail(port, "root@demo.test", "alias now root -> bob")
        expected = {"alice": 3, "bob": 2}
        wait_for(lambda: all(len(maildir_messages(work / "maildir" / u)) == n
                             for u, n in expected.items()), timeout=20)
        report(server, work, exporter)
        print(f"\nsmtpd still running: {server.running()} (pid {server.pid}); full log: {log}")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
