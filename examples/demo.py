"""The demo: a real smtpd on 127.0.0.1 using a Python table, a few mails, what happened.

Run as root on Debian with opensmtpd installed: `make demo` does both.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from opensmtpd.testing import Root, Smtpd, free_port, maildir_messages, send, wait_for

WORK = "/var/tmp/pyos-demo"

# The whole table backend: one Python file, several smtpd tables, any smtpd generation.
BACKEND = f'''#!/usr/bin/python3
from opensmtpd.table import Table, matches

DATA = {{
    "domains": ["demo.test", "*.demo.test"],
    "aliases": {{"root": "alice", "postmaster": "alice, bob"}},
    "users": {{"alice": "65534:65534:{WORK}/home", "bob": "65534:65534:{WORK}/home"}},
}}
table = Table()


@table.check("domain")
def is_local(key, request):
    return matches(request.service, key, DATA[request.table])


@table.lookup("alias", "userinfo")
def lookup(key, request):
    return DATA[request.table].get(key)


table.run()
'''

MAILS = [
    ("alice@demo.test", "a local user"),
    ("root@demo.test", "aliased to alice"),
    ("postmaster@mx.demo.test", "aliased to alice and bob, wildcard domain"),
    ("ghost@demo.test", "no such user"),
    ("someone@elsewhere.test", "not a local domain"),
]


def main() -> int:
    if os.geteuid() != 0 or not Path("/usr/sbin/smtpd").exists():
        print("demo: needs root and Debian's opensmtpd (run `make demo`)", file=sys.stderr)
        return 1
    root = Root(Path("/"), "host")
    root.install_library()
    work = Path(WORK)
    shutil.rmtree(work, ignore_errors=True)
    (work / "home").mkdir(parents=True)
    (work / "maildir").mkdir()
    os.chown(work / "maildir", 65534, 65534)
    for path in (work, work / "home"):
        path.chmod(0o755)
    port = free_port()
    conf = f"""
table domains pyos-demo
table aliases pyos-demo
table users pyos-demo
listen on 127.0.0.1 port {port}
action "local" maildir "{WORK}/maildir/%{{user.username}}" alias <aliases> userbase <users>
match from any for domain <domains> action "local"
"""
    print(f"smtpd.conf:{conf}")
    log = Path(tempfile.mkdtemp(prefix="pyos-demo-")) / "smtpd.log"
    server = Smtpd(root, conf, log, root.smtpd_env(), backends={"pyos-demo": BACKEND})
    try:
        server.start(ready_tables=("domains", "aliases", "users"), port=port)
        print(f"smtpd {os.popen('/usr/sbin/smtpd -h 2>&1').read().split()[2]} pid "
              f"{server.pid} listening on 127.0.0.1:{port}\n")
        for rcpt, why in MAILS:
            outcome = send(port, "demo@client.test", rcpt,
                           f"Subject: demo for {rcpt}\r\n\r\nhello\r\n")
            verdict = "accepted" if outcome.accepted else f"refused at {outcome.stage.upper()}"
            print(f"  {rcpt:28} ({why}): {verdict}: {outcome.code} {outcome.text}")
        expected = {"alice": 3, "bob": 1}
        wait_for(lambda: all(len(maildir_messages(work / "maildir" / u)) == n
                             for u, n in expected.items()), timeout=20)
        print("\nDelivered (maildir):")
        for user in expected:
            for message in maildir_messages(work / "maildir" / user):
                subject = re.search(r"^Subject: (.*)$", message, re.M)
                print(f"  {user}: {subject.group(1) if subject else '?'}")
        print("\nWhat smtpd asked the Python table (smtpd -T lookup):")
        for line in server.log().splitlines():
            if "lookup:" in line and "table proc:" in line:
                print("  " + line.strip())
        print(f"\nsmtpd still running: {server.running()} (pid {server.pid}); full log: {log}")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
