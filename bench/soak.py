#!/usr/bin/env python3
"""Soak: a real smtpd with every kind of our tables and filter-prometheus, concurrent
senders, faults injected on a schedule; reports what became of every message and how
the processes' memory moved. Not in CI (it runs for minutes). Needs root.

    .venv/bin/python bench/soak.py [--minutes 10] [--senders 8] [--pause 0.6]
        [--fault-every 12] [--sample 60] [--drain 300] [--no-consul] [--logs DIR]

smtpd 6.8 (the host) relays every accepted message to an SMTP sink (aiosmtpd, in this
process, recording each Message-Id). Each RCPT is matched against four tables, one of
each kind (smtpd.conf ``match from src <nets> mail-from <senders> for domain <domains>
rcpt-to <rcpts>``):

  nets      table-procexec (the bridge), its child a MappingTable script (netaddr)
  senders   table-consul on its embedded SQLite store (mailaddr)
  domains   a MappingTable backend (domain)
  rcpts     table-consul on a real Consul 1.8.7 dev agent (mailaddr; --no-consul: the
            MappingTable backend instead)

and the listener runs filter-prometheus. A sender thread sends one message per session
with a unique Message-Id; a 4xx (or a dropped connection) is retried with the same
Message-Id after a back-off, a 5xx is final. Faults, one every ``--fault-every`` seconds
in turn: the bridge's child SIGKILLed; the bridge's child SIGSTOPped for 4 s then
SIGCONTed; the embedded store's directory chmod 000 for 6 s (the table runs as user
opensmtpd);
Consul stopped for 5 s then restarted (a dev agent: empty again, its keys put back); the
exporter's port hammered for 3 s with the hostile clients of issue 14.

Reported: attempted, accepted, tempfailed-then-delivered, rejected, gave up, lost
(accepted, never at the sink), duplicated (at the sink more than once), the sink's count
beside filter-prometheus's committed counter, smtpd's PID unchanged, tracebacks and
exporter lines in the log, and the RSS of smtpd's processes and each of ours every
``--sample`` seconds. Exit status 0 when nothing was lost, duplicated or rejected.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import smtplib
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from _smtp import Sink, in_private_network

from opensmtpd.install import launcher_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harnesses
from harness.smtpd import Root, Smtpd, descendants, free_port, wait_for

WORK = f"/var/tmp/pyos-soak-{os.getpid()}"
LIB = f"/opt/pyos-soak-{os.getpid()}/lib"
MAP_BACKEND, BRIDGE_BACKEND = "pyos-soak-map", "pyos-soak-procexec"
DOMAIN = "soak.test"
MAPPING_SOURCE = """\
#!/usr/bin/python3
import sys
from opensmtpd.table import MappingTable

MappingTable(path=sys.argv[1]).run()
"""
MAX_ATTEMPTS = 40


class RecordingSink(Sink):
    """bench/_smtp.py's sink, also counting each Message-Id it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        content = getattr(envelope, "content", b"") or b""
        match = re.search(rb"^Message-Id: (<[^>\r\n]+>)", content, re.M | re.I)
        with self.lock:
            self.count += 1
            self.ids[match[1].decode() if match else "(none)"] += 1
        return "250 OK"


@dataclass
class Message:
    mid: str
    attempts: int = 0
    tempfails: int = 0
    outcome: str = "pending"  # accepted, rejected, gave-up
    last: str = ""


@dataclass
class Ledger:
    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def attempt(port: int, message: Message, sender: str, rcpt: str) -> tuple[str, str]:
    """One SMTP session: ("accepted" | "tempfail" | "rejected", what was seen)."""
    body = (f"Message-Id: {message.mid}\r\nSubject: soak\r\nFrom: <{sender}>\r\n"
            f"To: <{rcpt}>\r\n\r\n" + "soak line\r\n" * 10).encode()
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test",
                          timeout=60) as client:
            for command in (lambda: client.ehlo_or_helo_if_needed() or (250, b""),
                            lambda: client.mail(sender), lambda: client.rcpt(rcpt)):
                code, text = command()
                if code >= 300:
                    return ("tempfail" if code < 500 else "rejected"), f"{code} {text!r}"
            code, text = client.data(body)
            if code == 250:
                return "accepted", ""
            return ("tempfail" if code < 500 else "rejected"), f"{code} {text!r}"
    except smtplib.SMTPResponseException as exc:
        return ("tempfail" if exc.smtp_code < 500 else "rejected"), \
            f"{exc.smtp_code} {exc.smtp_error!r}"
    except (OSError, smtplib.SMTPException) as exc:
        return "tempfail", f"{type(exc).__name__}: {exc}"


def sender(number: int, port: int, ledger: Ledger, until: float, pause: float) -> None:
    seq = 0
    while time.monotonic() < until:
        seq += 1
        message = Message(f"<soak-{os.getpid()}-{number}-{seq}@client.test>")
        with ledger.lock:
            ledger.messages.append(message)
        delay = 1.0
        while message.attempts < MAX_ATTEMPTS:
            message.attempts += 1
            outcome, message.last = attempt(port, message, f"s{number}@client.test",
                                            f"r{number}-{seq}@{DOMAIN}")
            if outcome != "tempfail":
                message.outcome = outcome
                break
            message.tempfails += 1
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        else:
            message.outcome = "gave-up"
        time.sleep(pause)


# --- the processes: who is who, their RSS ---

# In this order: the bridge's command line names its child's script too.
ROLES = (("table-procexec", BRIDGE_BACKEND), ("bridge child", "bridge-child.py"),
         ("table-consul embedded", "embedded.conf"), ("table-consul consul", "agent.conf"),
         ("MappingTable", MAP_BACKEND), ("filter-prometheus", "opensmtpd.prometheus"))


def processes(smtpd_pid: int) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for pid in [smtpd_pid, *descendants(smtpd_pid)]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        role = next((name for name, mark in ROLES if mark in cmdline),
                    "smtpd" if cmdline.startswith("smtpd") or "/smtpd" in cmdline else None)
        if role is not None:
            found.setdefault(role, []).append(pid)
    return found


def rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match[1]) if match else 0


# --- the faults ---


def hostile(port: int, seconds: float) -> None:
    """Issue 14's clients: resets before and after a request, garbage, oversized
    headers, half-open connections."""
    end = time.monotonic() + seconds
    held: list[socket.socket] = []
    while time.monotonic() < end:
        for kind in ("reset", "reset-after", "garbage", "oversized", "half-open"):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                if kind == "half-open":
                    held.append(s)
                    continue
                if kind != "reset":
                    s.sendall({"reset-after": b"GET /metrics HTTP/1.1\r\n\r\n",
                               "garbage": bytes(range(256)) + b"\r\n\r\n",
                               "oversized": b"GET / HTTP/1.1\r\nX: " + b"a" * 100_000}[kind])
                if kind.startswith("reset"):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass
        time.sleep(0.05)
    for s in held:
        s.close()


@dataclass
class Rig:
    smtpd: Smtpd
    work: Path
    exporter_port: int
    consul: object | None  # harness.consul.Agent
    consul_keys: dict[str, str]
    log: list[str] = field(default_factory=list)
    faults: int = 0
    queued: int = 0  # envelopes still in smtpd's queue at the end (not lost: late)

    def note(self, text: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {text}")
        print(self.log[-1], flush=True)

    def child(self) -> int | None:
        pids = processes(self.smtpd.pid).get("bridge child", [])
        return pids[0] if pids else None

    def fault(self, number: int) -> None:
        kinds = ["kill-child", "stop-child", "store-unreadable", "consul-stop", "hammer"]
        if self.consul is None:
            kinds.remove("consul-stop")
        kind = kinds[number % len(kinds)]
        self.faults += 1
        if kind in ("kill-child", "stop-child"):
            pid = self.child()
            if pid is None:
                self.note(f"{kind}: no bridge child running")
                return
            if kind == "kill-child":
                os.kill(pid, signal.SIGKILL)
                self.note(f"bridge child {pid} SIGKILLed")
            else:
                os.kill(pid, signal.SIGSTOP)
                self.note(f"bridge child {pid} SIGSTOPped")
                time.sleep(4)
                os.kill(pid, signal.SIGCONT)
                self.note(f"bridge child {pid} SIGCONTed")
        elif kind == "store-unreadable":
            # The directory, as in issue 14: a reader with the file open would not see a
            # chmod of the file itself; the watcher's stat() of it fails at once.
            store = self.work / "store"
            store.chmod(0o000)
            self.note("embedded store's directory chmod 000")
            time.sleep(6)
            store.chmod(0o755)
            self.note("embedded store's directory chmod 755")
        elif kind == "consul-stop":
            agent = self.consul
            agent.stop()  # type: ignore[attr-defined]
            self.note("Consul stopped")
            time.sleep(5)
            agent.start()  # type: ignore[attr-defined]
            for key, value in self.consul_keys.items():
                agent.put(key, value)  # type: ignore[attr-defined]
            self.note("Consul restarted (a dev agent: keys put back)")
        else:
            hostile(self.exporter_port, 3)
            self.note("exporter hammered for 3 s")


def scrape(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(name + "{") and 'direction="smtp-in"' in line:
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def configure(work: Path, sink_port: int, smtp_port: int, exporter_port: int,
              consul_address: str | None) -> str:
    inside = str(work)
    (work / "nets").write_text("127.0.0.0/8\n")
    (work / "domains").write_text(f"{DOMAIN}\n")
    (work / "rcpts").write_text(f"@{DOMAIN}\n")
    (work / "bridge-child.py").write_text(MAPPING_SOURCE)
    from opensmtpd.consul.store import EmbeddedStore

    EmbeddedStore(str(work / "store" / "kv.sqlite3")).put(
        "soaksenders/mailaddr/@client.test", b"")
    (work / "embedded.conf").write_text(f"database = {inside}/store/kv.sqlite3\n")
    if consul_address:
        (work / "agent.conf").write_text(f"store = consul\naddress = {consul_address}\n")
        rcpts = f"table soakrcpts consul:{inside}/agent.conf"
    else:
        rcpts = f"table soakrcpts {MAP_BACKEND}:{inside}/rcpts"
    for path in (work, *work.rglob("*")):
        path.chmod(0o755 if path.is_dir() or path.suffix == ".py" else 0o644)
    prometheus = f"/usr/bin/python3 -m opensmtpd.prometheus -exporter 127.0.0.1:{exporter_port}"
    return f"""\
table soaknets "{BRIDGE_BACKEND}:{inside}/bridge-child.py {inside}/nets"
table soaksenders consul:{inside}/embedded.conf
table soakdomains {MAP_BACKEND}:{inside}/domains
{rcpts}
filter "prometheus" proc-exec "{prometheus}"
listen on 127.0.0.1 port {smtp_port} filter "prometheus"
action "out" relay host smtp://127.0.0.1:{sink_port}
match from src <soaknets> mail-from <soaksenders> for domain <soakdomains> \\
    rcpt-to <soakrcpts> action "out"
"""


def soak(args: argparse.Namespace) -> int:
    root = Root(Path("/"), "6.8", LIB)
    work = Path(WORK)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root.install_library()
    sink = RecordingSink()
    sink.controller.start()
    agent = None
    consul_keys = {f"soakrcpts/mailaddr/@{DOMAIN}": ""}
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="pyos-soak-"))
    logs.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if args.consul:
            from harness.consul import dev_agent

            agent = dev_agent(logs / "consul")
            agent.start()
            for key, value in consul_keys.items():
                agent.put(key, value)
        smtp_port, exporter_port = free_port(), free_port()
        conf = configure(work, sink.port, smtp_port, exporter_port,
                         agent.address if agent else None)
        backends = {MAP_BACKEND: MAPPING_SOURCE,
                    "consul": launcher_source("consul"),
                    BRIDGE_BACKEND: launcher_source("procexec", name=BRIDGE_BACKEND)}
        server = Smtpd(root, conf, logs / "smtpd.log", root.smtpd_env(), backends=backends,
                       flags=())
        server.start(port=smtp_port, timeout=60)
        smtpd_pid = server.pid
        rig = Rig(server, work, exporter_port, agent, consul_keys)
        print(f"smtpd {smtpd_pid} on port {smtp_port}, sink {sink.port}, exporter "
              f"{exporter_port}; logs in {logs}", flush=True)
        # the first message through proves the configuration (tables start lazily)
        probe = Message(f"<soak-probe-{os.getpid()}@client.test>")
        if not wait_for(lambda: attempt(smtp_port, probe, "probe@client.test",
                                        f"probe@{DOMAIN}")[0] == "accepted", 60, 1):
            print(f"the probe message was never accepted:\n{server.log()[-3000:]}",
                  file=sys.stderr)
            return 1
        ledger = Ledger()
        start = time.monotonic()
        until = start + args.minutes * 60
        threads = [threading.Thread(target=sender, args=(n, smtp_port, ledger, until,
                                                         args.pause), daemon=True)
                   for n in range(args.senders)]
        for t in threads:
            t.start()
        samples: list[tuple[float, dict[str, int]]] = []
        next_fault, next_sample, faults = start + args.fault_every, start, 0
        while time.monotonic() < until:
            now = time.monotonic()
            if now >= next_sample:
                procs = processes(smtpd_pid)
                samples.append((now - start, {role: sum(rss_kib(p) for p in pids)
                                              for role, pids in procs.items()}))
                next_sample += args.sample
            if now >= next_fault:
                rig.fault(faults)
                faults += 1
                next_fault = time.monotonic() + args.fault_every
            time.sleep(0.2)
        print("sending stopped; finishing retries", flush=True)
        for t in threads:
            t.join(MAX_ATTEMPTS * 10 + 60)
        accepted = {m.mid for m in ledger.messages if m.outcome == "accepted"}
        drained = time.monotonic()
        wait_for(lambda: accepted <= set(sink.ids), args.drain, 1)
        print(f"drained in {time.monotonic() - drained:.0f}s", flush=True)
        rig.queued = len(server.smtpctl("show", "queue").stdout.splitlines())
        procs = processes(smtpd_pid)
        samples.append((time.monotonic() - start, {role: sum(rss_kib(p) for p in pids)
                                                   for role, pids in procs.items()}))
        committed = scrape(exporter_port, "smtpd_transactions_committed_total")
        return report(args, ledger, sink, samples, rig, smtpd_pid, committed, logs)
    finally:
        if server is not None:
            server.stop()
        if agent is not None:
            agent.stop()
        sink.controller.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root.host(LIB).parent, ignore_errors=True)


def report(args: argparse.Namespace, ledger: Ledger, sink: RecordingSink,
           samples: list[tuple[float, dict[str, int]]], rig: Rig, smtpd_pid: int,
           committed: float | None, logs: Path) -> int:
    messages = ledger.messages
    by = Counter(m.outcome for m in messages)
    accepted = [m for m in messages if m.outcome == "accepted"]
    delivered = [m for m in accepted if sink.ids[m.mid]]
    lost = [m.mid for m in accepted if not sink.ids[m.mid]]
    duplicated = {mid: n for mid, n in sink.ids.items() if n > 1}
    ours = {m.mid for m in messages}
    unexpected = [mid for mid in sink.ids if mid not in ours and "probe" not in mid]
    log = rig.smtpd.log()
    print(f"\n== soak: smtpd 6.8, {args.minutes:g} min, {args.senders} senders, "
          f"{rig.faults} faults ==")
    print(f"attempted {len(messages)} messages ({sum(m.attempts for m in messages)} "
          "SMTP sessions)")
    print(f"accepted {len(accepted)}; tempfailed then delivered "
          f"{sum(1 for m in delivered if m.tempfails)} (tempfails in all "
          f"{sum(m.tempfails for m in messages)}); rejected {by['rejected']}; gave up "
          f"{by['gave-up']}; pending {by['pending']}")
    print(f"at the sink {sum(sink.ids.values())} messages ({len(sink.ids)} Message-Ids); "
          f"lost {len(lost)} (of which still in smtpd's queue at the end: {rig.queued}); "
          f"duplicated {len(duplicated)}; not ours {len(unexpected)}")
    print(f"filter-prometheus committed (smtp-in): {committed} (the probe included)")
    print(f"smtpd pid {smtpd_pid}: {'still running' if rig.smtpd.running() else 'GONE'}")
    print(f"smtpd log: {len(log.splitlines())} lines, {log.count('Traceback')} tracebacks, "
          f"{log.count('metrics endpoint:')} exporter lines, "
          f"{log.count('table-consul kv put')} 'kv put' hints; sync failures: "
          + ", ".join(f"{table} {log.count(f'sync of {table!r} failed')}"
                      for table in ("soaksenders/", "soakrcpts/")))
    for m in [m for m in messages if m.outcome in ("rejected", "gave-up")][:10]:
        print(f"  {m.outcome}: {m.mid} after {m.attempts} attempts: {m.last}")
    for mid in lost[:10]:
        print(f"  lost: {mid}")
    roles = sorted({role for _, rss in samples for role in rss})
    print("\nRSS (MiB) over time; smtpd is the sum of its processes")
    print(f"{'t (s)':>6} " + " ".join(f"{role[:14]:>14}" for role in roles))
    for t, rss in samples:
        print(f"{t:6.0f} " + " ".join(f"{rss.get(role, 0) / 1024:14.1f}" for role in roles))
    print("\nfaults:")
    for line in rig.log:
        print(f"  {line}")
    print(f"logs: {logs}")
    bad = lost or duplicated or by["rejected"] or by["gave-up"] or not rig.smtpd.running()
    return 1 if bad else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--pause", type=float, default=0.6,
                        help="seconds a sender waits between messages (the default keeps "
                        "below what smtpd 6.8 relays per second here: about 15)")
    parser.add_argument("--drain", type=float, default=300.0, metavar="SECONDS",
                        help="how long to wait for the sink to receive every accepted "
                        "message")
    parser.add_argument("--fault-every", type=float, default=12.0, metavar="SECONDS")
    parser.add_argument("--sample", type=float, default=60.0, metavar="SECONDS",
                        help="RSS sampling interval")
    parser.add_argument("--no-consul", dest="consul", action="store_false",
                        help="no Consul agent: rcpts is a MappingTable")
    parser.add_argument("--logs", help="keep smtpd's and Consul's logs in this directory")
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args(sys.argv[1:])
    if os.geteuid() != 0:
        print("soak.py needs root (smtpd, namespaces)", file=sys.stderr)
        return 1
    if args.in_namespace:
        return soak(args)
    return in_private_network([sys.executable, __file__, "--in-namespace", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
