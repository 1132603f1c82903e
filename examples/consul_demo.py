"""table-consul's demo: a real smtpd whose aliases live in the embedded store, changed live.

Run as root on Debian with opensmtpd installed (`make demo-consul`): root's alias is set
with `table-consul kv put`, a mail to root goes to that address; the alias changes, the
next mail follows it, smtpd is never restarted. Mail is relayed to a local SMTP sink.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aiosmtpd.controller import Controller

from opensmtpd.consul.install import wrapper_source
from opensmtpd.consul.store import EmbeddedStore
from opensmtpd.testing import Root, Smtpd, free_port, send, wait_for

WORK = "/var/tmp/pyos-consul-demo"
KV = [str(Path(sys.executable).parent / "table-consul"), "kv", "-c", f"{WORK}/table-consul.conf"]


class Sink:
    def __init__(self) -> None:
        self.rcpts: list[str] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.rcpts += envelope.rcpt_tos  # type: ignore[attr-defined]
        return "250 OK"


def kv(*args: str) -> None:
    print("  $ table-consul kv " + " ".join(args))
    subprocess.run([*KV, *args], check=True)


def mail(port: int, sink: Sink, expected: str) -> None:
    outcome = send(port, "demo@client.test", "root@demo.test")
    print(f"  mail to root@demo.test: {outcome.code} {outcome.text}")
    wait_for(lambda: expected in sink.rcpts, timeout=30)
    print(f"  delivered to: {sink.rcpts[-1] if sink.rcpts else 'nothing yet'}")


def main() -> int:
    if os.geteuid() != 0 or not Path("/usr/sbin/smtpd").exists():
        print("demo: needs root and Debian's opensmtpd (run `make demo-consul`)", file=sys.stderr)
        return 1
    root = Root(Path("/"), "host")
    root.install_library()
    shutil.rmtree(WORK, ignore_errors=True)
    Path(WORK).mkdir(mode=0o755, parents=True)
    Path(f"{WORK}/table-consul.conf").write_text(f"database = {WORK}/kv.sqlite3\n")
    sink = Sink()
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    port = free_port()
    conf = f"""
table aliases consul:{WORK}/table-consul.conf
listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:{sink_port}
action "fwd" forward-only alias <aliases>
match from any for domain "example.org" action "out"
match from any for domain "demo.test" action "fwd"
"""
    print(f"smtpd.conf:{conf}")
    log = Path(tempfile.mkdtemp(prefix="pyos-consul-demo-")) / "smtpd.log"
    server = Smtpd(root, conf, log, root.smtpd_env(),
                   backends={"consul": wrapper_source("/usr/bin/python3")})
    store = EmbeddedStore(f"{WORK}/kv.sqlite3")
    try:
        kv("put", "aliases/alias/root", "gilles@example.org")
        server.start(ready_tables=("aliases",), port=port)
        pid = server.pid
        mail(port, sink, "gilles@example.org")  # the first lookup waits for the first sync
        kv("put", "aliases/alias/root", "henry@example.org")
        index = store.list().index
        wait_for(lambda: f"at index {index}" in server.log(), timeout=20)
        mail(port, sink, "henry@example.org")
        print(f"\nsmtpd pid {pid} -> {server.pid}: never restarted. What table-consul logged:")
        for line in server.log().splitlines():
            if line.startswith("table aliases["):
                print("  " + line)
        return 0
    finally:
        server.stop()
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
