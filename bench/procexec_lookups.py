#!/usr/bin/env python3
"""Lookups per second through table-procexec, next to the same Python backend speaking imsg
directly and next to Debian's C table-passwd, all driven over imsg as smtpd 6.8 drives a
table (opensmtpd.table.driver.Driver: one request, wait for the reply), in one run:

  table-passwd (C)        /usr/libexec/opensmtpd/table-passwd FILE (opensmtpd-extras, imsg)
  MappingTable direct     a Python MappingTable, imsg (detected)
  bridge -> MappingTable  table-procexec '/…/backend.py': the same script, 0.1 protocol
  bridge -> C passwd      table-procexec 'chroot DIR /usr/libexec/opensmtpd/table-passwd
                          FILE': Debian 13's C table-passwd 1.0.2 (0.1 protocol), which
                          shows what the bridge itself costs
  relay -> MappingTable,  a 30-line Python relay with nothing but the translation (no
  relay -> C passwd       deadline, detection, restart, ordering; one message per read):
                          the ceiling for any Python bridge, for reference only

Every backend is started once (handshakes and start-up outside every measurement); rounds
of N lookups run interleaved, backend order rotated per round; rates are medians over the
rounds, ratios the median of the ratios within each round (robust to a busy host).
Processes are not pinned: the kernel places them, as it does for smtpd.
CPU per lookup is utime+stime from /proc of the backend, plus its child for the bridge.
Timings are reported, never asserted. Target: bridge >= 0.5x direct.

    .venv/bin/python bench/procexec_lookups.py [--lookups 3000] [--rounds 15] [--chroot DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from opensmtpd.table import Found, Service
from opensmtpd.table.driver import Driver

REPO = Path(__file__).resolve().parent.parent
BRIDGE = Path(sys.executable).parent / "table-procexec"
C_PASSWD = "/usr/libexec/opensmtpd/table-passwd"
USER, VALUE = "alice", "1000:1000:/home/alice"
PASSWD_LINE = "alice:x:1000:1000::/home/alice:/bin/sh\n"
TICK = os.sysconf("SC_CLK_TCK")
BACKEND = f"""\
from opensmtpd.table import MappingTable

MappingTable({{{USER!r}: {VALUE!r}}}, services=["userinfo"]).run()
"""


# The least a Python imsg-to-0.1 relay can do: unsafe (one whole message per read, no
# deadline), a reference for what the bridge's safety costs.
RELAY = """\
import os, shlex, socket, struct, subprocess, sys
H, R = struct.Struct("=IHHII"), struct.Struct("=i")
words = shlex.split(sys.argv[1])
ours, theirs = socket.socketpair()
subprocess.Popen(["passwd", *words[1:]], executable=words[0], stdin=theirs, stdout=theirs)
theirs.close()
child, pid, n, buf = ours.fileno(), os.getpid(), 0, b""
os.write(child, b"config|smtpd-version|7.6.0\\nconfig|protocol|0.1\\n"
                b"config|tablename|passwd\\nconfig|ready\\n")
while not buf.endswith(b"register|ready\\n"):
    buf += os.read(child, 4096)
while data := os.read(0, 65536):
    if data[0] == 2:  # OPEN
        os.write(0, H.pack(0, 16, 0, 0, pid))
        continue
    n += 1
    os.write(child, b"table|0.1|0|passwd|lookup|userinfo|%08x|%s\\n" % (n, data[28:-1]))
    value = os.read(child, 65536).rstrip(b"\\n").split(b"|", 3)[3]
    body = R.pack(1) + value + b"\\0"
    os.write(0, H.pack(0, 16 + len(body), 0, 0, pid) + body)
"""


class BenchError(Exception):
    pass


@dataclass
class Backend:
    name: str
    command: list[str]
    config: str | None
    driver: Driver | None = None
    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # µs per lookup


def pids(root: int) -> list[int]:
    """The backend and its children (the bridge's child)."""
    try:
        children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
    except OSError:
        children = []
    return [root, *map(int, children)]


def cpu_ticks(pid_list: list[int]) -> int:
    total = 0
    for pid in pid_list:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def measure(backend: Backend, count: int) -> None:
    driver = backend.driver
    assert driver is not None
    lookup, service, clock, expected = driver.lookup, Service.USERINFO, time.perf_counter_ns, \
        Found(VALUE)
    processes = pids(driver.process.pid)
    latencies = [0] * count
    before = cpu_ticks(processes)
    started = clock()
    for i in range(count):
        t0 = clock()
        reply = lookup(service, USER)
        latencies[i] = clock() - t0
        if reply != expected:
            raise BenchError(f"{backend.name} answered {reply!r}")
    seconds = (clock() - started) / 1e9
    ticks = cpu_ticks(processes) - before
    latencies.sort()
    backend.rates.append(count / seconds)
    backend.p50.append(latencies[count // 2] / 1000)
    backend.p99.append(latencies[min(count - 1, int(count * 0.99))] / 1000)
    backend.cpu.append(ticks / TICK * 1e6 / count)


def setup(args: argparse.Namespace, work: Path, chroot_file: str) -> list[Backend]:
    passwd = work / "passwd"
    passwd.write_text(PASSWD_LINE)
    script = work / "backend.py"
    script.write_text(f"#!{sys.executable}\n{BACKEND}")
    script.chmod(0o755)
    c_native = f"{args.chroot_command} {args.chroot} {args.native_binary} {chroot_file}"
    relay = work / "relay.py"
    relay.write_text(f"#!{sys.executable}\n{RELAY}")
    relay.chmod(0o755)
    return [
        Backend("table-passwd (C)", [args.imsg_binary], str(passwd)),
        Backend("MappingTable direct", [str(script)], None),
        Backend("bridge -> MappingTable", [str(BRIDGE)], str(script)),
        Backend("bridge -> C passwd", [str(BRIDGE)], c_native),
        Backend("relay -> MappingTable", [str(relay)], str(script)),
        Backend("relay -> C passwd", [str(relay)], c_native),
    ]


def check_prerequisites(args: argparse.Namespace) -> None:
    problems = []
    for path, why in ((args.imsg_binary, "apt-get install opensmtpd-extras"),
                      (str(BRIDGE), "pip install -e . (console script table-procexec)"),
                      (str(args.chroot / args.native_binary.lstrip("/")), "make chroot")):
        if not os.access(path, os.X_OK):
            problems.append(f"{path}: missing ({why})")
    if os.geteuid() != 0:
        problems.append("chroot needs root")
    if problems:
        raise BenchError("; ".join(problems))


RATIOS = (  # (numerator, denominator, note)
    ("bridge -> MappingTable", "MappingTable direct", "target >= 0.5x"),
    ("bridge -> MappingTable", "table-passwd (C)", ""),
    ("MappingTable direct", "table-passwd (C)", ""),
    ("bridge -> C passwd", "table-passwd (C)", "the bridge's own cost"),
    ("relay -> MappingTable", "MappingTable direct", "ceiling of a Python relay"),
    ("bridge -> MappingTable", "relay -> MappingTable", "what the bridge's safety costs"),
)


def report(backends: list[Backend], args: argparse.Namespace) -> None:
    """Rates are medians over rounds; each ratio is the median of the ratios taken within
    each round (backends measured back to back), which a busy or throttled host disturbs
    far less than a ratio of medians."""
    median = statistics.median
    print(f"\n{args.rounds} interleaved rounds x {args.lookups} imsg lookups (userinfo {USER}) "
          f"per backend; median over rounds\n")
    header = f"{'backend':<24} {'lookups/s':>10} {'p50 µs':>8} {'p99 µs':>8} {'CPU µs/lookup':>14}"
    print(header)
    print("-" * len(header))
    rates = {b.name: b.rates for b in backends}
    for b in backends:
        print(f"{b.name:<24} {median(b.rates):>10.0f} {median(b.p50):>8.1f} "
              f"{median(b.p99):>8.1f} {median(b.cpu):>14.2f}")
    print()
    for top, bottom, note in RATIOS:
        per_round = [t / d for t, d in zip(rates[top], rates[bottom], strict=True)]
        spread = f"rounds {min(per_round):.2f}-{max(per_round):.2f}"
        label = f"{top} / {bottom}:"
        print(f"{label:<48} {median(per_round):.2f}x  ({spread}{'; ' + note if note else ''})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=3000, help="lookups per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--chroot", type=Path, default=REPO / "build" / "trixie",
                        help="Debian 13 root with opensmtpd-table-passwd (default build/trixie)")
    parser.add_argument("--chroot-command", default="/usr/sbin/chroot")
    parser.add_argument("--native-binary", default=C_PASSWD,
                        help="the 7.6+ table-passwd, as a path inside the chroot")
    parser.add_argument("--imsg-binary", default=C_PASSWD,
                        help="the opensmtpd-extras (imsg) table-passwd on this host")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.lookups < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--lookups and --rounds must be >= 1, --warmup >= 0")
    args.chroot = args.chroot.resolve()
    try:
        check_prerequisites(args)
    except BenchError as exc:
        print(f"procexec_lookups: {exc}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="procexec-bench-"))
    chroot_tmp = Path(tempfile.mkdtemp(prefix="procexec-bench-", dir=args.chroot / "tmp"))
    chroot_tmp.chmod(0o755)
    (chroot_tmp / "passwd").write_text(PASSWD_LINE)
    chroot_file = "/" + str((chroot_tmp / "passwd").relative_to(args.chroot))
    stderr_log = open(work / "stderr.log", "w+b")  # noqa: SIM115 (closed in finally)
    started: list[Backend] = []
    try:
        for backend in setup(args, work, chroot_file):
            backend.driver = Driver(backend.command, protocol="imsg", table="passwd",
                                    config=backend.config, timeout=args.timeout,
                                    stderr=stderr_log.fileno())
            started.append(backend)
            for _ in range(args.warmup):
                backend.driver.lookup(Service.USERINFO, USER)
        for round_no in range(args.rounds):
            shift = round_no % len(started)
            for backend in started[shift:] + started[:shift]:
                measure(backend, args.lookups)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        report(started, args)
        return 0
    except Exception as exc:
        stderr_log.seek(0)
        tail = stderr_log.read()[-2000:].decode(errors="replace")
        print(f"procexec_lookups: {type(exc).__name__}: {exc}\nbackend stderr:\n{tail}",
              file=sys.stderr)
        return 1
    finally:
        for backend in started:
            assert backend.driver is not None
            if backend.driver.close(timeout=10.0) is None:
                print(f"{backend.name}: killed after EOF", file=sys.stderr)
        stderr_log.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(chroot_tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
