#!/usr/bin/env python3
"""Lookups per second of a Python table backend next to Debian's C table-passwd.

One run, both smtpd generations, driven the way smtpd drives a table: one request, wait
for the reply (opensmtpd.table.driver.Driver):

  imsg    (smtpd <= 7.5)  C: /usr/libexec/opensmtpd/table-passwd (opensmtpd-extras 6.7.1)
  native  (smtpd >= 7.6)  C: table-passwd of Debian 13's opensmtpd-table-passwd, run with
                          ``chroot DIR /usr/libexec/opensmtpd/table-passwd FILE``

Each C backend reads a one-line passwd file; the Python backend is a MappingTable with the
same userinfo entry; a "minimal loop" backend (plain Python, no library) shows what Python
itself costs. Each round starts every backend afresh (handshake and warm-up untimed, the
chroot's start-up too), then times N lookups per backend and per CPU placement in a
rotated order, so machine noise falls on all alike; the median round is reported. Backend
CPU is utime+stime of the backend's PID from /proc/PID/stat, read around each timed run
(chroot execs the backend, so its PID is the one Popen returned). Timings are reported,
never asserted: the exit status only says whether every backend answered correctly.

    .venv/bin/python bench/table_lookups.py [--lookups 10000] [--rounds 7] [--chroot DIR]
                                             [--placements same,split,free]
"""

from __future__ import annotations

import argparse
import contextlib
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
USER, UID, GID, HOME = "alice", 1000, 1000, "/home/alice"
VALUE = f"{UID}:{GID}:{HOME}"
PASSWD_LINE = f"{USER}:x:{UID}:{GID}::{HOME}:/bin/sh\n"
TICK = os.sysconf("SC_CLK_TCK")

LIBRARY_BACKEND = """\
from opensmtpd.table import MappingTable

MappingTable({DATA}, services=["userinfo"]).run()
""".replace("{DATA}", repr({USER: VALUE}))

# The least a Python imsg backend can do: frame, answer LOOKUP, ack OPEN (fd 0 only).
MINIMAL_IMSG = """\
import os, struct
H, R, pid, buf = struct.Struct("=IHHII"), struct.Struct("=i"), os.getpid(), b""
DATA = {DATA}
while data := os.read(0, 65536):
    buf += data
    while len(buf) >= 16 and len(buf) >= (n := H.unpack_from(buf)[1]):
        kind, payload, buf = buf[0], buf[16:n], buf[n:]
        if kind == 3:  # CLOSE
            continue
        value = DATA.get(payload[12:-1]) if kind == 6 else None
        body = (b"" if kind == 2 else R.pack(1) + value + b"\\0" if value
                else R.pack(0 if kind == 6 else -1))
        os.write(0, H.pack(0, 16 + len(body), 0, 0, pid) + body)
""".replace("{DATA}", repr({USER.encode(): VALUE.encode()}))

# The same for the native protocol (fd 0 in, fd 1 out).
MINIMAL_NATIVE = """\
import os
DATA, buf = {DATA}, b""
while data := os.read(0, 65536):
    *lines, buf = (buf + data).split(b"\\n")
    out = []
    for line in lines:
        f = line.split(b"|", 7)
        if f[0] == b"config":
            if f[1] == b"ready":
                out.append(b"register|userinfo\\nregister|ready\\n")
        elif f[4] == b"lookup" and (value := DATA.get(f[7])):
            out.append(b"lookup-result|%s|found|%s\\n" % (f[6], value))
        else:
            out.append(b"%s-result|%s|not-found\\n" % (f[4], f[6 if len(f) > 6 else 5]))
    os.write(1, b"".join(out))
""".replace("{DATA}", repr({USER.encode(): VALUE.encode()}))


class BenchError(Exception):
    """A backend could not be set up or answered wrongly: the bench fails loudly."""


@dataclass
class Round:
    seconds: float
    latencies: list[int]  # ns
    cpu_ticks: int


@dataclass
class Backend:
    name: str
    generation: str
    kind: str  # "C", "Python", "baseline" (--baseline), "minimal"
    command: list[str]
    config: str | None
    driver: Driver | None = None
    rounds: dict[str, list[Round]] = field(default_factory=dict)  # by placement


# Where the driver (playing smtpd) and the backend run. A synchronous ping-pong costs very
# different amounts on one CPU (a direct switch) and across two (a cross-CPU wake-up, an
# idle CPU to wake: expensive in a VM), and an unpinned pair lands on either, so results
# without pinning swing between the two. Each placement is reported on its own.
PLACEMENTS = {
    "same": "driver and backend pinned to one CPU",
    "split": "driver on one CPU, backend on another",
    "free": "not pinned: the kernel places them",
}


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def pin(placement: str, pid: int, cpus: list[int]) -> None:
    """Pin this process (the driver) and every thread of ``pid`` (the backend)."""
    if placement == "same":
        driver, backend = {cpus[0]}, {cpus[0]}
    elif placement == "split":
        driver, backend = {cpus[0]}, {cpus[1]}
    else:
        driver = backend = set(cpus)
    os.sched_setaffinity(0, driver)
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(task), backend)


def script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


def backends(args: argparse.Namespace, work: Path, chroot_file: str) -> list[Backend]:
    passwd = work / "passwd"
    passwd.write_text(PASSWD_LINE)
    library = script(work, "library_backend.py", LIBRARY_BACKEND)
    todo = [
        Backend("table-passwd (C)", "imsg", "C", [args.imsg_binary], str(passwd)),
        Backend("MappingTable", "imsg", "Python", [library], None),
        Backend("minimal loop", "imsg", "minimal",
                [script(work, "minimal_imsg.py", MINIMAL_IMSG)], None),
        # chroot execs the backend, so the PID Popen returns is the backend's own.
        Backend("table-passwd (C)", "native", "C",
                [args.chroot_command, str(args.chroot), args.native_binary, chroot_file], None),
        Backend("MappingTable", "native", "Python", [library], None),
        Backend("minimal loop", "native", "minimal",
                [script(work, "minimal_native.py", MINIMAL_NATIVE)], None),
    ]
    if args.baseline is not None:  # the same script importing another version's opensmtpd
        path = f"import sys\nsys.path.insert(0, {str(args.baseline / 'src')!r})\n"
        baseline = script(work, "baseline_backend.py", path + LIBRARY_BACKEND)
        for at, generation in ((2, "imsg"), (6, "native")):
            todo.insert(at, Backend("baseline", generation, "baseline", [baseline], None))
    return todo


def check_prerequisites(args: argparse.Namespace) -> None:
    problems = []
    if not os.access(args.imsg_binary, os.X_OK):
        problems.append(f"{args.imsg_binary}: missing (apt-get install opensmtpd-extras)")
    native = args.chroot / args.native_binary.lstrip("/")
    if not args.chroot.is_dir():
        problems.append(f"{args.chroot}: no Debian 13 chroot there (--chroot DIR)")
    elif not os.access(native, os.X_OK):
        problems.append(f"{native}: missing (install opensmtpd-table-passwd in the chroot)")
    if shutil.which(args.chroot_command) is None:
        problems.append(f"{args.chroot_command}: not found")
    if os.geteuid() != 0:
        problems.append("chroot needs root")
    if problems:
        raise BenchError("; ".join(problems))


def start(backend: Backend, timeout: float, stderr: int) -> None:
    try:
        backend.driver = Driver(backend.command, protocol=backend.generation, table="passwd",
                                config=backend.config, timeout=timeout, stderr=stderr)
    except Exception as exc:
        raise BenchError(f"{backend.name} ({backend.generation}) failed to start: "
                         f"{type(exc).__name__}: {exc}") from exc


def lookups(backend: Backend, count: int) -> Round:
    driver = backend.driver
    assert driver is not None
    lookup, userinfo, clock = driver.lookup, Service.USERINFO, time.perf_counter_ns
    expected = Found(VALUE)
    latencies = [0] * count
    pid = driver.process.pid
    before_cpu = cpu_ticks(pid)
    started = clock()
    for i in range(count):
        t0 = clock()
        reply = lookup(userinfo, USER)
        latencies[i] = clock() - t0
        if reply != expected:
            raise BenchError(f"{backend.name} ({backend.generation}) answered {reply!r}")
    seconds = (clock() - started) / 1e9
    return Round(seconds, latencies, cpu_ticks(pid) - before_cpu)


def run_round(todo: list[Backend], round_no: int, args: argparse.Namespace, cpus: list[int],
              stderr: int) -> None:
    """Start every backend afresh, time each (backend, placement) in a rotated order, stop
    them all. Fresh processes each round: one process can be persistently faster or slower
    than the next (memory layout), and the median round should not hang on one draw."""
    started: list[Backend] = []
    try:
        for backend in todo:
            os.sched_setaffinity(0, cpus)
            start(backend, args.timeout, stderr)
            started.append(backend)
            assert backend.driver is not None
            for _ in range(args.warmup):
                backend.driver.lookup(Service.USERINFO, USER)
        runs = [(b, p) for p in args.placements for b in started]
        shift = round_no % len(runs)  # rotate the order: no backend always goes first
        for backend, placement in runs[shift:] + runs[:shift]:
            assert backend.driver is not None
            pin(placement, backend.driver.process.pid, cpus)
            backend.rounds.setdefault(placement, []).append(lookups(backend, args.lookups))
    finally:
        os.sched_setaffinity(0, cpus)
        for backend in started:
            stop(backend)


def stop(backend: Backend) -> None:
    driver = backend.driver
    assert driver is not None
    backend.driver = None
    if driver.close(timeout=5.0) is None:
        print(f"{backend.name} ({backend.generation}) killed: no exit on EOF", file=sys.stderr)
    if driver.process.poll() is None:  # never leave one behind
        os.kill(driver.process.pid, 9)
        driver.process.wait()


def percentile(sorted_ns: list[int], fraction: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(fraction * len(sorted_ns)))] / 1000


@dataclass
class Result:
    backend: Backend
    placement: str
    rate: float
    p50: float
    p99: float
    cpu_us: float
    spread: tuple[float, float]  # slowest and fastest round, lookups/s


def summarise(backend: Backend, placement: str, count: int) -> Result:
    """Median round for rate and latency; CPU over all rounds (finer than one round's ticks)."""
    rounds = backend.rounds[placement]
    rates, p50s, p99s = [], [], []
    for r in rounds:
        ordered = sorted(r.latencies)
        rates.append(count / r.seconds)
        p50s.append(percentile(ordered, 0.50))
        p99s.append(percentile(ordered, 0.99))
    cpu_us = sum(r.cpu_ticks for r in rounds) / TICK * 1e6 / (count * len(rounds))
    median = statistics.median
    return Result(backend, placement, median(rates), median(p50s), median(p99s), cpu_us,
                  (min(rates), max(rates)))


def report(results: list[Result], args: argparse.Namespace, cpus: list[int]) -> None:
    print(f"\n{args.rounds} interleaved rounds x {args.lookups} lookups (userinfo {USER}) per "
          f"backend and placement; lookups/s, p50, p99: median round; CPU: utime+stime from "
          f"/proc/PID/stat ({TICK} ticks/s) over all rounds; CPUs used: {cpus}")
    header = (f"{'backend':<18} {'gen':<7} {'placement':<9} {'lookups/s':>10} {'p50 µs':>8} "
              f"{'p99 µs':>8} {'CPU µs/lookup':>14}  {'rounds (k/s)':>13}")
    for placement in args.placements:
        print(f"\n{placement}: {PLACEMENTS[placement]}\n{header}\n{'-' * len(header)}")
        for r in results:
            if r.placement == placement:
                print(f"{r.backend.name:<18} {r.backend.generation:<7} {placement:<9} "
                      f"{r.rate:>10.0f} {r.p50:>8.1f} {r.p99:>8.1f} {r.cpu_us:>14.2f}  "
                      f"{f'{r.spread[0] / 1000:.0f}-{r.spread[1] / 1000:.0f}':>13}")
    print("\nPython / C (>1 lookups/s: Python faster; <1 CPU: Python cheaper)")
    for placement in args.placements:
        for generation in ("imsg", "native"):
            by_kind = {r.backend.kind: r for r in results
                       if r.backend.generation == generation and r.placement == placement}
            c = by_kind["C"]
            for kind, label in (("Python", "MappingTable"), ("baseline", "baseline"),
                                ("minimal", "minimal loop")):
                if kind not in by_kind:
                    continue
                r = by_kind[kind]
                cpu = f"{r.cpu_us / c.cpu_us:.2f}x" if c.cpu_us > 0 else "n/a (C below a tick)"
                print(f"  {placement:<6} {generation:<7} {label:<13} lookups/s "
                      f"{r.rate / c.rate:.2f}x   CPU per lookup {cpu}")
    print("\nMappingTable / minimal loop, CPU per lookup (the library's cost over plain Python)")
    for placement in args.placements:
        for generation in ("imsg", "native"):
            by_kind = {r.backend.kind: r for r in results
                       if r.backend.generation == generation and r.placement == placement}
            floor = by_kind["minimal"].cpu_us
            ratios = "   ".join(f"{label} {by_kind[kind].cpu_us / floor:.2f}x"
                               for kind, label in (("Python", "MappingTable"),
                                                   ("baseline", "baseline"))
                               if kind in by_kind and floor > 0)
            print(f"  {placement:<6} {generation:<7} {ratios or 'n/a (below a tick)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=10000, help="lookups per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--placements", default="same,split,free",
                        help="comma-separated, from: " + ", ".join(PLACEMENTS))
    parser.add_argument("--warmup", type=int, default=500,
                        help="lookups after each start, not timed")
    parser.add_argument("--chroot", type=Path,
                        default=Path(os.environ.get("PYOS_CHROOT", REPO / "build" / "trixie")),
                        help="Debian 13 root with opensmtpd-table-passwd "
                             "(default: $PYOS_CHROOT, else build/trixie)")
    parser.add_argument("--chroot-command", default="chroot")
    parser.add_argument("--native-binary", default="/usr/libexec/opensmtpd/table-passwd",
                        help="the 7.6+ table-passwd, as a path inside the chroot")
    parser.add_argument("--imsg-binary", default="/usr/libexec/opensmtpd/table-passwd",
                        help="the opensmtpd-extras (imsg) table-passwd on this host")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-reply timeout (s)")
    parser.add_argument("--baseline", type=Path,
                        help="a source tree (DIR/src/opensmtpd) whose MappingTable runs "
                             "beside this one, in the same rounds: before/after, interleaved")
    args = parser.parse_args(argv)
    if args.lookups < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--lookups and --rounds must be >= 1, --warmup >= 0")
    args.chroot = args.chroot.resolve()
    args.placements = [p for p in args.placements.split(",") if p]
    if not args.placements or any(p not in PLACEMENTS for p in args.placements):
        parser.error(f"--placements: choose from {', '.join(PLACEMENTS)}")
    cpus = sorted(os.sched_getaffinity(0))
    if "split" in args.placements and len(cpus) < 2:
        parser.error("--placements split needs two CPUs; this process may use only one")

    try:
        check_prerequisites(args)
    except BenchError as exc:
        print(f"table_lookups: {exc}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="table-bench-"))
    chroot_tmp = Path(tempfile.mkdtemp(prefix="table-bench-", dir=args.chroot / "tmp"))
    (chroot_tmp / "passwd").write_text(PASSWD_LINE)
    chroot_tmp.chmod(0o755)
    chroot_file = "/" + str((chroot_tmp / "passwd").relative_to(args.chroot))
    stderr_log = open(work / "stderr.log", "w+b")  # noqa: SIM115 (closed in finally)
    todo = backends(args, work, chroot_file)
    try:
        for round_no in range(args.rounds):
            run_round(todo, round_no, args, cpus, stderr_log.fileno())
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        report([summarise(b, p, args.lookups) for p in args.placements for b in todo],
               args, cpus)
        return 0
    except Exception as exc:
        stderr_log.seek(0)
        tail = stderr_log.read()[-2000:].decode(errors="replace")
        print(f"table_lookups: {type(exc).__name__}: {exc}\nbackend stderr:\n{tail}",
              file=sys.stderr)
        return 1
    finally:
        os.sched_setaffinity(0, cpus)
        stderr_log.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(chroot_tmp, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
