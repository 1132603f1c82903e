#!/usr/bin/env python3
"""filter-prometheus throughput, next to the pipe limit and next to smtpd without it.

1. Stream: report lines per second and CPU microseconds per SMTP session through
   filter-prometheus, next to ``cat`` reading the same pipe, same run. The stream is what
   smtpd 6.8 (protocol 0.6) sends a filter registered like filter-prometheus (only the 12
   events its metrics use): the sessions of the recorded lab transcript
   (tests/unit/filter/data/smtpd-6.8.in — accepted, refused, rewritten, junked,
   disconnected, timed out… and the relayed smtp-out session), replayed with fresh
   session ids, message ids, timestamps and distinct client names, tens of thousands
   of times. Wall time runs from the first byte written to the reader's exit at EOF;
   the filter's start-up (imports, HTTP bind) is excluded from both wall and CPU time.

2. smtpd: messages accepted per second by a real smtpd (6.8 on the host, 7.6 and 7.9
   in the chroots, as ``--roots`` says) with filter-prometheus attached to the listener
   and to the relay action, vs the same configuration without it; rounds alternate, the
   median is reported. This part runs in a private network namespace (``unshare -n``,
   loopback only): smtpd resolves every client's address, and a resolver that drops
   queries (as in some sandboxes) stalls sessions 5 s at random, drowning what is
   measured.

Timings are printed with their ratios, never asserted.

    .venv/bin/python bench/filter_prometheus.py [--sessions 40000] [--rounds 3]
        [--messages 2000] [--clients 6] [--roots 6.8,7.6(,7.9)] [--no-smtpd] [--host-network]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _smtp import Sink, blast, cpu_seconds, in_private_network

from opensmtpd.prometheus.metrics import EVENTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harness
from harness.smtpd import Root, Smtpd, chroot_mounts, free_port, port_open, wait_for

REPO = Path(__file__).resolve().parent.parent
TRANSCRIPT = REPO / "tests" / "unit" / "filter" / "data" / "smtpd-6.8.in"
CHROOTS = {"7.6": REPO / "build" / "trixie", "7.9": REPO / "build" / "sid"}
LIB = f"/opt/pyos-bench-{os.getpid()}/lib"  # our own copy of the library in each root
HANDSHAKE = (b"config|smtpd-version|6.8.0p2\nconfig|smtp-session-timeout|300\n"
             b"config|subsystem|smtp-in\nconfig|subsystem|smtp-out\nconfig|admd|bench\n"
             b"config|ready\n")
FILTER = [sys.executable, "-m", "opensmtpd.prometheus"]


# --- the stream ---


def session_shapes() -> list[list[list[str]]]:
    """Each recorded session as its lines (split into fields), only registered events."""
    sessions: dict[tuple[str, str], list[list[str]]] = {}
    for line in TRANSCRIPT.read_text().splitlines():
        fields = line.split("|")
        if fields[0] != "report" or fields[4] not in EVENTS:
            continue
        sessions.setdefault((fields[3], fields[5]), []).append(fields)
    return [lines for lines in sessions.values() if lines[0][4] == "link-connect"]


def stream(count: int) -> tuple[bytes, int, int]:
    """``count`` sessions replayed from the shapes: (bytes, lines, sessions)."""
    shapes = session_shapes()
    out: list[str] = []
    clock = 1_800_000_000.0
    lines = 0
    for n in range(count):
        shape = shapes[n % len(shapes)]
        sid = f"{0x5000000000000000 + n:016x}"
        base = float(shape[0][2])
        msgids: dict[str, str] = {}
        for fields in shape:
            f = list(fields)
            f[2] = f"{clock + float(f[2]) - base:.6f}"
            f[5] = sid
            if f[4].startswith("tx-"):
                f[6] = msgids.setdefault(f[6], f"{(n * 7 + len(msgids)) & 0xffffffff:08x}")
            if f[4] == "link-connect":
                f[6] = f"host-{n}.client{n % 977}.test"
            if f[4] in ("tx-mail", "tx-rcpt"):
                f[8] = f"user{n}@domain{n % 1009}.test"
            out.append("|".join(f))
            lines += 1
        clock += 0.01
    return ("\n".join(out) + "\n").encode(), lines, count


def _feed(argv: list[str], data: bytes, ready: Callable[[], bool]) -> tuple[float, float]:
    """Run ``argv`` reading ``data`` on a pipe: (wall seconds, CPU seconds), start-up
    excluded (measured from when ``ready()`` holds)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    deadline = time.monotonic() + 30
    while not ready():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} did not start")
        time.sleep(0.01)
    cpu0 = cpu_seconds(proc.pid)
    started = time.perf_counter()
    view = memoryview(data)
    fd = proc.stdin.fileno()
    while view:
        view = view[os.write(fd, view[:1 << 20]):]
    proc.stdin.close()
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = 0
    return wall, usage.ru_utime + usage.ru_stime - cpu0


def bench_stream(sessions: int, rounds: int) -> None:
    data, lines, count = stream(sessions)
    payload = HANDSHAKE + data
    print(f"\n== stream: {count} sessions, {lines} report lines, {len(data) / 1e6:.1f} MB "
          f"(smtpd 6.8 shapes, filter-prometheus's 12 events) ==")
    results: dict[str, list[tuple[float, float]]] = {"cat": [], "filter-prometheus": []}
    for _ in range(rounds):
        results["cat"].append(_feed(["cat"], payload, lambda: True))
        port = free_port()
        results["filter-prometheus"].append(_feed(
            [*FILTER, "-exporter", f"127.0.0.1:{port}"], payload,
            lambda port=port: port_open(port)))  # type: ignore[misc]
    print(f"{'reader':<20}{'lines/s':>14}{'wall s':>9}{'CPU µs/session':>16}")
    rates = {}
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        rates[name] = lines / wall
        print(f"{name:<20}{lines / wall:>14,.0f}{wall:>9.3f}{cpu / count * 1e6:>16.1f}")
    print(f"filter-prometheus / cat: {rates['filter-prometheus'] / rates['cat']:.3f} "
          f"(target >= 250k lines/s: {rates['filter-prometheus']:,.0f})")


# --- real smtpd ---


# A filter that registers what filter-prometheus registers and reads it with cat: what
# smtpd pays to have a filter at all (filtered sessions, report lines written).
CAT_FILTER = "/var/tmp/pyos-bench-cat-filter.sh"  # inside the root
CAT_SCRIPT = ("#!/bin/sh\nwhile read -r line; do [ \"$line\" = 'config|ready' ] && break; done\n"
              "printf '" + "".join(f"register|report|{sub}|{event}\\n"
                                   for sub in ("smtp-in", "smtp-out") for event in EVENTS)
              + "register|ready\\n'\nexec cat >/dev/null\n")
NULL_FILTER = "/var/tmp/pyos-bench-null-filter.sh"  # registers nothing: filtering alone
NULL_SCRIPT = ("#!/bin/sh\nwhile read -r line; do [ \"$line\" = 'config|ready' ] && break; done\n"
               "printf 'register|ready\\n'\nexec cat >/dev/null\n")
CONFIGS = ("without a filter", "null filter (no events)", "cat filter (same events)",
           "filter-prometheus")


def _conf(kind: str, port: int, sink: int, exporter: int) -> str:
    if kind == CONFIGS[0]:
        return (f"listen on 127.0.0.1 port {port}\n"
                f'action "out" relay host smtp://127.0.0.1:{sink}\n'
                'match from any for domain "bench.test" action "out"\n')
    if kind == CONFIGS[1]:
        command = f"/bin/sh {NULL_FILTER}"
    elif kind == CONFIGS[2]:
        command = f"/bin/sh {CAT_FILTER}"
    else:
        command = f"/usr/bin/python3 -m opensmtpd.prometheus -exporter 127.0.0.1:{exporter}"
    return (f'filter observer proc-exec "{command}"\n'
            f"listen on 127.0.0.1 port {port} filter observer\n"
            f'action "out" relay host smtp://127.0.0.1:{sink} filter observer\n'
            'match from any for domain "bench.test" action "out"\n')


def _blast(port: int, messages: int, clients: int) -> float:
    """Messages accepted per second, ``clients`` sessions at a time (bench/_smtp.py)."""
    result = blast(port, messages, clients)
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} messages failed: {result.failures[:3]}")
    return result.rate


def bench_smtpd(root: Root, messages: int, clients: int, rounds: int, log_dir: Path) -> None:
    root.install_library()
    cleanup = root.host(LIB).parent
    for path, text in ((CAT_FILTER, CAT_SCRIPT), (NULL_FILTER, NULL_SCRIPT)):
        script = root.host(path)
        script.write_text(text)
        script.chmod(0o755)
    sink = Sink()
    sink.controller.start()
    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    try:
        for n in range(rounds):
            for name in CONFIGS[n % 4:] + CONFIGS[:n % 4]:  # rotated: no order bias
                port, exporter = free_port(), free_port()
                server = Smtpd(root, _conf(name, port, sink.port, exporter),
                               log_dir / f"smtpd-{root.name}-{n}-{CONFIGS.index(name)}.log",
                               root.smtpd_env())
                try:
                    server.start(port=port)
                    if name == CONFIGS[3] and not wait_for(lambda e=exporter: port_open(e)):
                        raise RuntimeError(f"filter-prometheus did not start:\n{server.log()}")
                    time.sleep(0.5)  # let the filters finish their handshake
                    rates[name].append(_blast(port, messages, clients))
                    if not server.running() or "lost processor" in server.log():
                        raise RuntimeError(f"smtpd died:\n{server.log()}")
                finally:
                    server.stop()
    finally:
        sink.controller.stop()
        shutil.rmtree(cleanup, ignore_errors=True)
        for path in (CAT_FILTER, NULL_FILTER):
            root.host(path).unlink(missing_ok=True)
    print(f"\n== smtpd {root.name}: {messages} messages accepted, {clients} concurrent clients, "
          f"median of {rounds} rounds (relayed to a sink meanwhile) ==")
    for name, values in rates.items():
        print(f"{name:<28}{statistics.median(values):>10.1f} msg/s   "
              f"({', '.join(f'{v:.1f}' for v in values)})")
    median = {name: statistics.median(values) for name, values in rates.items()}
    without, null, cat, ours = (median[name] for name in CONFIGS)
    print(f"filter-prometheus / without a filter: {ours / without:.3f} (target >= 0.95)")
    print(f"filter-prometheus / cat filter: {ours / cat:.3f}; cat filter / without: "
          f"{cat / without:.3f}; null filter / without: {null / without:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=6,
                        help="concurrent SMTP sessions (smtpd's listen queue holds 6)")
    parser.add_argument("--roots", default="6.8,7.6")
    parser.add_argument("--no-smtpd", action="store_true")
    parser.add_argument("--smtpd-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host-network", action="store_true",
                        help="run smtpd in the host's network namespace (DNS included)")
    args = parser.parse_args()
    if not args.smtpd_only:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"{socket.gethostname()}")
        bench_stream(args.sessions, args.rounds)
    if args.no_smtpd:
        return 0
    if os.geteuid() != 0:
        print("smtpd part skipped: needs root", file=sys.stderr)
        return 1
    if not args.smtpd_only and not args.host_network:
        again = [sys.executable, __file__, "--smtpd-only", "--rounds", str(args.rounds),
                 "--messages", str(args.messages), "--clients", str(args.clients),
                 "--roots", args.roots]
        return in_private_network(again)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.roots.split(","):
            if name == "6.8":
                bench_smtpd(Root(Path("/"), "6.8", lib=LIB), args.messages, args.clients,
                            args.rounds, Path(tmp))
            elif name in CHROOTS:
                with chroot_mounts(CHROOTS[name]):  # shared with test sessions
                    bench_smtpd(Root(CHROOTS[name], name, lib=LIB), args.messages,
                                args.clients, args.rounds, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
