#!/usr/bin/env python3
"""Messages per second a real smtpd accepts when every RCPT is checked against a table of
10,000 recipients: smtpd's own file: table, Debian's C table, and the Python ones.

What a mail admin sizes with. smtpd 6.8 (the host), 7.6 (build/trixie) and 7.9
(build/sid) each accept mail from concurrent SMTP clients, one message per session, for
``rN@bench.test``; the action is local delivery with ``userbase <users>``, so smtpd looks
the recipient's user up in table ``users`` (service userinfo) at RCPT time, once per RCPT
(lab-6.8 table-transcript.md, test ``userbase``): a known user is accepted, an unknown
one refused 550. ``users`` holds the same 10,000 users (``--users``), served by, per
generation:

  static    smtpd's own ``file:`` table — the reference every ratio is taken against.
            Not a floor at this size: smtpd searches it key by key (table_static.c,
            table_static_lookup(): dict_iter() and strcmp() until a match, revisions
            1.19 of 2018 to 1.35 of 2024), a cost that grows with the table; hence the
            ratio to C beside it
  passwd    Debian's C table-passwd (opensmtpd-extras 6.7.1 on the host,
            opensmtpd-table-passwd 1.0.2 in the chroots), from a passwd-format file
  sqlite    Debian's C table-sqlite (opensmtpd-extras 6.7.1; the host only)
  mapping   ``MappingTable(path=...)`` of opensmtpd.table, from the static table's file
  consul    table-consul (the installer's launcher) on its embedded SQLite store
  procexec  the same MappingTable behind table-procexec, the bridge (smtpd 6.8 only)

Only the table differs between runs. Delivery is kept out: ``smtpctl pause mda`` right
after start, so accepted mail stays queued; and the spool is a tmpfs (``--spool disk``:
the root's own), since on this VM's disk the queue's fsync()s (about 0.6 ms each) would
cap every backend at the same rate. Each run is a fresh smtpd (the harness cleans the
spool at start and stop), first probed untimed (a known user accepted, retrying on 4xx
while a table starts; an unknown one refused 550), then timed; after it, the queue must
hold every accepted message. Rounds interleave the backends, in an order rotated each
round; each backend's msg/s is the median round, with min and max, and its ratio to the
static table (and to table-passwd, "to C") the median of its per-round ratios. CPU per
message of smtpd's lookup process, its other processes, the table processes, the client
and everything else on the machine (other users' work) is printed beside, so a
client-bound or disturbed run shows; then each table's user and system CPU, context
switches and threads per lookup; with ``--profile DIR``, where a Python table's code
spends its time (py-spy). Timings are printed, never asserted: the exit status is 0 when
every message got the reply expected, 1 otherwise.

smtpd runs in a private network namespace (loopback only: smtpd resolves every client's
address, and a resolver that drops queries stalls sessions 5 s at random) and mount
namespace (the tmpfs spool is seen by no one else); the chroots' /proc and /dev are
mounted before, by the harness, shared with test sessions. Needs root.

    .venv/bin/python bench/smtpd_tables.py [--rounds 5] [--messages 1000] [--clients 6]
        [--rcpts 1] [--users 10000] [--roots 6.8,7.6,7.9] [--backends static,passwd,
        sqlite,mapping,consul,procexec] [--spool tmpfs|disk] [--logs DIR] [--trace]
        [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _smtp import TICK, Blast, blast, cpu_seconds, in_private_network

from opensmtpd.install import launcher_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harness
from harness.smtpd import Root, Smtpd, chroot_mounts, descendants, free_port, send

REPO = Path(__file__).resolve().parent.parent
CHROOTS = {"7.6": REPO / "build" / "trixie", "7.9": REPO / "build" / "sid"}
USERS = 10_000  # the default; --users
DOMAIN = "bench.test"
UID = GID = 65534
TARGET = 0.95  # the target: every Python table >= 0.95x the static table's msg/s
PROFILE_RATE = 1000  # py-spy samples per second
MAP_BACKEND, BRIDGE_BACKEND = "pyos-sizing-map", "pyos-sizing-procexec"
# Inside each root (the same path in all): the data, and our copy of the library
WORK = f"/var/tmp/pyos-sizing-{os.getpid()}"
LIB = f"/opt/pyos-sizing-{os.getpid()}/lib"
HOME = f"{WORK}/home"
MAPPING_SOURCE = """\
#!/usr/bin/python3
import sys
from opensmtpd.table import MappingTable

MappingTable(path=sys.argv[1], services=["userinfo"]).run()
"""


@dataclass(frozen=True)
class Backend:
    name: str
    label: str
    python: bool
    roots: tuple[str, ...] = ("6.8", "7.6", "7.9")


BACKENDS = {b.name: b for b in (
    Backend("static", "file: (smtpd's static table)", False),
    Backend("passwd", "table-passwd (C)", False),
    Backend("sqlite", "table-sqlite (C)", False, ("6.8",)),
    Backend("mapping", "MappingTable (Python)", True),
    Backend("consul", "table-consul, embedded store (Python)", True),
    Backend("procexec", "MappingTable via table-procexec (Python)", True, ("6.8",)),
)}


class BenchError(Exception):
    """A run could not be made or got a wrong reply: reported, and the exit status is 1."""


def table_line(backend: str, work: str) -> str:
    return {
        "static": f"table users file:{work}/users",
        "passwd": f"table users passwd:{work}/passwd",
        "sqlite": f"table users sqlite:{work}/sqlite.conf",
        "mapping": f"table users {MAP_BACKEND}:{work}/users",
        "consul": f"table users consul:{work}/table-consul.conf",
        "procexec": f'table users "{BRIDGE_BACKEND}:{work}/mapping.py {work}/users"',
    }[backend]


def programs(backend: str) -> dict[str, str]:
    """PATH_LIBEXEC/table-NAME -> program, installed by the harness under the root's lock.
    The launchers run the root's /usr/bin/python3 and import the library from smtpd's
    PYTHONPATH (Root.smtpd_env), as a bridged child does."""
    return {
        "mapping": {MAP_BACKEND: MAPPING_SOURCE},
        "consul": {"consul": launcher_source("consul")},
        "procexec": {BRIDGE_BACKEND: launcher_source("procexec", name=BRIDGE_BACKEND)},
    }.get(backend, {})


def smtpd_conf(backend: str, work: str, port: int) -> str:
    return (f"{table_line(backend, work)}\n"
            f"listen on 127.0.0.1 port {port}\n"
            f'action "local" maildir "{work}/maildir/%{{user.username}}" userbase <users>\n'
            f'match from any for domain "{DOMAIN}" action "local"\n')


def user(i: int) -> str:
    return f"r{i}"


def rcpts_of(n: int, per_message: int, users: int, fake_unknown: int | None = None,
             ) -> list[str]:
    """Whom message n goes to: spread over the whole table (7919 is a prime).
    ``fake_unknown``: that message goes to a user who does not exist (a test of the exit
    status)."""
    if n == fake_unknown:
        return [f"nobody@{DOMAIN}"] * per_message
    return [f"{user((n * per_message + j) * 7919 % users)}@{DOMAIN}"
            for j in range(per_message)]


# --- the data, the same users in every backend's form ---


def build_store(directory: Path, users: int) -> Path:
    """table-consul's embedded store with the users (built once, on /dev/shm when there
    is one: 10,000 committed writes take 5 s there, 35 s on this disk)."""
    from opensmtpd.consul.store import EmbeddedStore  # the writer ``table-consul kv`` uses

    path = directory / "kv.sqlite3"
    store = EmbeddedStore(str(path))
    for i in range(users):
        store.put(f"users/userinfo/{user(i)}", f"{UID}:{GID}:{HOME}".encode())
    return path


def write_data(work: Path, store: Path | None, users: int) -> None:
    """Everything the backends read, world-readable (tables run as user opensmtpd)."""
    inside, home = WORK, HOME
    (work / "home").mkdir()  # smtpd opens ~/.forward at RCPT time: an empty home
    (work / "users").write_text("".join(f"{user(i)} {UID}:{GID}:{home}\n"
                                        for i in range(users)))
    (work / "passwd").write_text("".join(f"{user(i)}:x:{UID}:{GID}::{home}:/usr/sbin/nologin\n"
                                         for i in range(users)))
    with contextlib.closing(sqlite3.connect(work / "users.sqlite")) as db:
        db.execute("CREATE TABLE users (name TEXT PRIMARY KEY, uid INTEGER, gid INTEGER, "
                   "home TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)",
                       [(user(i), UID, GID, home) for i in range(users)])
        db.commit()
    (work / "sqlite.conf").write_text(
        f"dbpath {inside}/users.sqlite\n"
        "query_userinfo SELECT uid, gid, home FROM users WHERE name = ?\n")
    if store is not None:
        shutil.copy(store, work / "kv.sqlite3")
    (work / "table-consul.conf").write_text(f"database = {inside}/kv.sqlite3\n")
    (work / "mapping.py").write_text(MAPPING_SOURCE)
    for path in (work, *work.rglob("*")):
        path.chmod(0o755 if path.is_dir() or path.name == "mapping.py" else 0o644)


# --- one run: a fresh smtpd, probed, then timed ---


@dataclass
class Run:
    rate: float
    wall: float
    messages: int
    cpu: dict[str, float]  # KINDS: CPU seconds during the blast
    overflows: int  # connections smtpd's listen queue dropped (SMTPD_BACKLOG is 5)
    tables: dict[str, float]  # the table processes: _table_counters() during the blast


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy so far (/proc/stat, every CPU)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # no idle, iowait


def _listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def _processes(server: Smtpd) -> dict[int, str]:
    """smtpd's processes by PID: "lookup" (its lookup process, lka: where a table's
    answer is awaited, and where a static table is searched), "smtpd" (its others) or
    "table" (a backend, the bridge and its child)."""
    kinds = {}
    for pid in (server.pid, *descendants(server.pid)):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0 == b"smtpd: lookup":
            kinds[pid] = "lookup"
        elif argv0.split(b":")[0] in (b"smtpd", b"/usr/sbin/smtpd"):
            kinds[pid] = "smtpd"
        else:
            kinds[pid] = "table"
    return kinds


def _table_counters(kinds: dict[int, str]) -> dict[str, float]:
    """The table processes' user and system CPU seconds, context switches (voluntary or
    not, every thread) and threads so far."""
    counters = {"user": 0.0, "system": 0.0, "switches": 0.0, "threads": 0.0}
    for pid in (pid for pid, kind in kinds.items() if kind == "table"):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
            counters["user"] += int(fields[11]) / TICK
            counters["system"] += int(fields[12]) / TICK
            for task in tasks:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                        counters["switches"] += int(line.split()[1])
                counters["threads"] += 1
        except OSError:  # gone: what it used is lost
            continue
    return counters


def _probe(port: int) -> None:
    """Untimed: a known user accepted (4xx retried while the table starts: table-consul's
    first sync, a Python start-up), an unknown one refused 550 — the table is consulted."""
    deadline = time.monotonic() + 30
    while True:
        known = send(port, "probe@client.test", f"{user(0)}@{DOMAIN}")
        if known.accepted:
            break
        if not 400 <= known.code < 500 or time.monotonic() > deadline:
            raise BenchError(f"known user not accepted: {known}")
        time.sleep(0.2)
    unknown = send(port, "probe@client.test", f"nobody@{DOMAIN}")
    if (unknown.stage, unknown.code) != ("rcpt", 550):
        raise BenchError(f"unknown user not refused 550 at RCPT: {unknown}")


def _pause_mda(server: Smtpd) -> None:
    """Accepted mail stays queued. The listener may open before the control socket
    does: retry for a while."""
    deadline = time.monotonic() + 10
    while (paused := server.smtpctl("pause", "mda")).returncode != 0:
        if time.monotonic() > deadline or not server.running():
            raise BenchError(f"smtpctl pause mda: {paused.stderr.strip()}")
        time.sleep(0.1)


def _queued(server: Smtpd) -> int:
    shown = server.smtpctl("show", "queue")
    if shown.returncode != 0:
        raise BenchError(f"smtpctl show queue: {shown.stderr.strip()}")
    return sum(1 for line in shown.stdout.splitlines() if line.strip())


def one_run(root: Root, backend: str, work: str, args: argparse.Namespace, log: Path,
            ) -> Run:
    port = free_port()
    server = Smtpd(root, smtpd_conf(backend, work, port), log, root.smtpd_env(),
                   backends=programs(backend),
                   flags=("-v", "-T", "lookup") if args.trace else ())
    try:
        server.start(port=port)
        _pause_mda(server)
        _probe(port)
        kinds = _processes(server)
        with profiled(kinds, backend, args.profile, log.stem):
            before = {pid: cpu_seconds(pid) for pid in kinds}
            busy, overflows, tables = _machine_busy(), _listen_overflows(), \
                _table_counters(kinds)
            result: Blast = blast(port, args.messages, args.clients,
                                  lambda n: rcpts_of(n, args.rcpts, args.users,
                                                     args.fake_unknown))
            cpu = {"lookup": 0.0, "smtpd": 0.0, "table": 0.0, "client": result.cpu}
            for pid, kind in kinds.items():
                cpu[kind] += cpu_seconds(pid) - before[pid]
            cpu["others"] = max(0.0, _machine_busy() - busy - sum(cpu.values()))
            overflows = _listen_overflows() - overflows
            after = _table_counters(kinds)
            tables = {k: after[k] - tables[k] if k != "threads" else after[k] for k in after}
        if result.failures:
            raise BenchError(f"{len(result.failures)} of {args.messages} messages failed: "
                             + "; ".join(result.failures[:3]))
        if not server.running():
            raise BenchError("smtpd exited")
        queued = _queued(server)
        if queued != (args.messages * args.rcpts + 1):  # + the probe
            raise BenchError(f"{queued} envelopes queued, expected "
                             f"{args.messages * args.rcpts + 1}")
        return Run(result.rate, result.wall, result.accepted, cpu, overflows, tables)
    except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        tail = "\n".join(server.log().splitlines()[-15:])
        raise BenchError(f"smtpd {root.name}, {backend}: {exc}\n  smtpd's log ends:\n{tail}"
                         ) from None
    finally:
        server.stop()


@contextlib.contextmanager
def profiled(kinds: dict[int, str], backend: str, directory: str | None, stem: str,
             ) -> Iterator[None]:
    """With --profile: py-spy samples each Python table process while the block runs
    (raw collapsed stacks, DIR/STEM-PID.txt, what flamegraph.pl reads)."""
    if directory is None or not BACKENDS[backend].python:
        yield
        return
    spies = []
    for pid, kind in kinds.items():
        if kind == "table":
            output = Path(directory) / f"{stem}-{pid}.txt"
            spies.append(subprocess.Popen(
                [py_spy(), "record", "--pid", str(pid), "--rate", str(PROFILE_RATE),
                 "--format", "raw", "--gil", "--nonblocking", "--full-filenames",
                 "--output", str(output)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)  # attached
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        for spy in spies:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(found, os.X_OK):
        raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
    return found


def profile_summary(paths: list[Path], user_us: float, top: int = 12) -> list[str]:
    """Where a table's Python code spent its time, from py-spy's collapsed stacks of
    GIL-holding threads: the share of samples each function (and each file) was the one
    running, and that share of ``user_us`` (the table processes' user CPU per lookup,
    measured: Python runs in user mode holding the GIL). Self time only: sampling without
    stopping the process (--nonblocking) reads the running frame right but its callers
    now and then from a stale stack."""
    own: dict[str, int] = {}
    files: dict[str, int] = {}
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frame = _frame(stack.rsplit(";", 1)[-1])
            total += int(count)
            own[frame] = own.get(frame, 0) + int(count)
            where = frame.split(" (", 1)[1].rstrip(")")
            files[where] = files.get(where, 0) + int(count)
    if not total:
        return ["  no samples"]
    lines = [f"  {total} samples holding the GIL; shares of {user_us:.1f} µs of user CPU "
             "per lookup"]
    for title, counts in (("by function", own), ("by file", files)):
        lines.append(f"  {title}:")
        for name, samples in sorted(counts.items(), key=lambda item: -item[1])[:top]:
            share = samples / total
            lines.append(f"    {share:6.1%} {share * user_us:7.1f} µs  {name}")
    return lines


def _frame(text: str) -> str:
    """'f (/opt/x/lib/opensmtpd/table/wire/native.py:42)' -> 'f (table/wire/native.py)'."""
    name, _, where = text.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    if "/opensmtpd/" in where:
        where = where.rsplit("/opensmtpd/", 1)[1]
    elif "/python3" in where:
        where = "stdlib " + where.rsplit("/", 1)[-1]
    return f"{name} ({where})"


# --- a generation: its root prepared, its runs, its report ---


@dataclass
class Generation:
    root: Root
    backends: list[str]
    work: str  # inside the root
    versions: str = ""
    runs: dict[str, list[Run | None]] = field(default_factory=dict)


def _dpkg_version(root: Root, package: str) -> str:
    try:
        return root.run("dpkg-query", "-W", "-f", "${Version}", package).strip()
    except (subprocess.SubprocessError, OSError):
        return "?"


def check_root(root: Root, backends: list[str]) -> None:
    """Fail loudly on what is missing (never a silent skip)."""
    if not root.host("/usr/sbin/smtpd").exists():
        hint = "apt-get install opensmtpd" if not root.chrooted else "make chroot"
        raise BenchError(f"no smtpd in {root.path} ({hint})")
    for backend in ("passwd", "sqlite"):
        binary = root.host(f"/usr/libexec/opensmtpd/table-{backend}")
        if backend in backends and not binary.exists():
            raise BenchError(f"{binary} missing (opensmtpd-extras on the host, "
                             "opensmtpd-table-passwd in the chroots: make deps chroot)")


@contextlib.contextmanager
def prepared(root: Root, backends: list[str], store: Path | None, args: argparse.Namespace,
             ) -> Iterator[Generation]:
    """The library where user opensmtpd imports it, the data, a tmpfs spool (in this
    private mount namespace); all removed afterwards."""
    check_root(root, backends)
    generation = Generation(root, backends, WORK, runs={b: [] for b in backends})
    extras = "opensmtpd-extras" if not root.chrooted else "opensmtpd-table-passwd"
    generation.versions = (f"opensmtpd {_dpkg_version(root, 'opensmtpd')}, "
                           f"{extras} {_dpkg_version(root, extras)}")
    spool_dir = root.host("/var/spool/smtpd")
    try:
        root.install_library()
        host = root.host(WORK)
        shutil.rmtree(host, ignore_errors=True)
        host.mkdir(parents=True)
        write_data(host, store, args.users)
        if args.spool == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=711,size=1g", "pyos-sizing",
                            str(spool_dir)], check=True, timeout=30)
        yield generation
    finally:
        if args.spool == "tmpfs":
            subprocess.run(["umount", str(spool_dir)], check=False, timeout=30)
        shutil.rmtree(root.host(WORK), ignore_errors=True)
        shutil.rmtree(root.host(root.lib).parent, ignore_errors=True)


KINDS = ("lookup", "smtpd", "table", "client", "others")


def _span(values: list[float], fmt: str) -> str:
    return f"({min(values):{fmt}}-{max(values):{fmt}})"


def _ratios(runs: list[Run | None], reference: list[Run | None]) -> list[float]:
    """Per-round ratios of msg/s: the runs of one round saw the same machine."""
    return [r.rate / s.rate for r, s in zip(runs, reference, strict=True)
            if r is not None and s is not None]


def report(generation: Generation, args: argparse.Namespace) -> list[str]:
    """Print a generation's table; return the target lines of its Python tables."""
    root = generation.root
    where = "the host" if not root.chrooted else root.path.name + " chroot"
    print(f"\n== smtpd {root.name} ({where}; {generation.versions}): {args.messages} "
          f"messages x {args.rcpts} RCPT per run, {args.clients} clients, {args.users:,} "
          f"users, "
          f"spool on {args.spool}; median of {args.rounds} rounds ==")
    print(f"{'':42}{'':20}{'ratio to static':<22}{'':9}"
          f"{'CPU µs per message (all rounds)':>46}")
    print(f"{'backend':<42}{'msg/s':>6} {'(min-max)':<13}{'median':>7} {'(min-max)':<14}"
          f"{'to C':>6}   {'lookup':>7}{'smtpd':>7}{'table':>7}{'total':>7}{'client':>7}"
          f"{'others':>7}")
    static, passwd = generation.runs["static"], generation.runs.get("passwd")
    targets: list[str] = []
    profiles: list[str] = []
    for backend in generation.backends:
        runs = generation.runs[backend]
        done = [r for r in runs if r is not None]
        label = BACKENDS[backend].label
        if not done:
            print(f"{label:<42}{'failed':>6}")
            continue
        rates = [r.rate for r in done]
        ratios = _ratios(runs, static)
        ratio = statistics.median(ratios) if ratios else float("nan")
        to_c = _ratios(runs, passwd) if passwd else []
        messages = sum(r.messages for r in done)
        cpu = [sum(r.cpu[k] for r in done) / messages * 1e6 for k in KINDS]
        print(f"{label:<42}{statistics.median(rates):>6.0f} {_span(rates, '.0f'):<13}"
              f"{ratio:>7.3f} {_span(ratios, '.3f') if ratios else '':<14}"
              f"{statistics.median(to_c) if to_c else float('nan'):>6.3f}   "
              + "".join(f"{c:>7.0f}" for c in (*cpu[:3], sum(cpu[:3]), *cpu[3:])))
        if BACKENDS[backend].python and args.profile:
            paths = sorted(Path(args.profile).glob(f"smtpd-{root.name}-{backend}-*.txt"))
            user_us = sum(r.tables["user"] for r in done) / messages / args.rcpts * 1e6
            profiles += [f"{label}, smtpd {root.name}: where the table's Python code runs "
                         "(py-spy)", *profile_summary(paths, user_us)]
        if BACKENDS[backend].python:
            verdict = "met" if ratio >= TARGET else "SHORT"
            targets.append(f"smtpd {root.name}: {label}: {ratio:.3f}x the static table's "
                           f"msg/s (target >= {TARGET}x: {verdict})"
                           + (f", {statistics.median(to_c):.3f}x table-passwd's" if to_c
                              else ""))
    done_static = [r for r in static if r is not None]
    if done_static:
        wall = sum(r.wall for r in done_static)
        messages = sum(r.messages for r in done_static)
        busy = {k: sum(r.cpu[k] for r in done_static) / wall * 100 for k in KINDS}
        client_us = sum(r.cpu["client"] for r in done_static) / messages * 1e6
        rate = messages / wall
        print(f"client check (static runs): {client_us:.0f} µs of client CPU per message, so "
              f"one CPU would drive {1e6 / client_us:,.0f} msg/s, {1e6 / client_us / rate:.1f}x "
              f"what smtpd took; busy: client {busy['client']:.0f}% of a CPU, smtpd "
              f"{busy['lookup'] + busy['smtpd']:.0f}%, others {busy['others']:.0f}% "
              f"(of {100 * (os.cpu_count() or 1)}%)")
    overflows = sum(r.overflows for runs in generation.runs.values() for r in runs if r)
    if overflows:
        print(f"note: smtpd's listen queue overflowed {overflows} times (SMTPD_BACKLOG is 5: "
              "each costs a session 1 s); fewer --clients avoid it")
    tabled = [b for b in generation.backends if b != "static"
              and any(r is not None for r in generation.runs[b])]
    if tabled:
        print("table processes per lookup (all rounds): CPU µs user + system, context "
              "switches (every thread), threads")
    for backend in tabled:
        done = [r for r in generation.runs[backend] if r is not None]
        lookups = sum(r.messages for r in done) * args.rcpts
        usr, system, switches = (sum(r.tables[k] for r in done) / lookups
                                 for k in ("user", "system", "switches"))
        print(f"  {BACKENDS[backend].label:<42}{usr * 1e6:6.0f} + {system * 1e6:3.0f} µs"
              f"{switches:6.1f} switches {max(r.tables['threads'] for r in done):3.0f} threads")
    for line in profiles:
        print(line)
    return targets


def bench(args: argparse.Namespace) -> int:
    failures: list[str] = []
    roots = args.roots.split(",")
    with tempfile.TemporaryDirectory(prefix="pyos-sizing-") as tmp, \
            tempfile.TemporaryDirectory(prefix="pyos-sizing-",
                                        dir="/dev/shm" if os.path.isdir("/dev/shm") else None
                                        ) as shm, contextlib.ExitStack() as stack:
        logs = Path(args.logs) if args.logs else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        if args.profile:
            py_spy()  # or fail now
            Path(args.profile).mkdir(parents=True, exist_ok=True)
        store = build_store(Path(shm), args.users) if "consul" in args.backends.split(",") \
            else None
        generations = []
        for name in roots:
            root = Root(Path("/") if name == "6.8" else CHROOTS[name].resolve(), name, LIB)
            backends = [b for b in args.backends.split(",") if name in BACKENDS[b].roots]
            generations.append(stack.enter_context(prepared(root, backends, store, args)))
        for number in range(args.rounds):
            for generation in generations:
                shift = number % len(generation.backends)
                for backend in generation.backends[shift:] + generation.backends[:shift]:
                    log = logs / f"smtpd-{generation.root.name}-{backend}-{number}.log"
                    try:
                        run: Run | None = one_run(generation.root, backend, generation.work,
                                                  args, log)
                    except BenchError as exc:
                        failures.append(str(exc))
                        print(f"FAILED: {exc}", file=sys.stderr)
                        run = None
                    generation.runs[backend].append(run)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} at the end")
        targets = [line for generation in generations for line in report(generation, args)]
    print()
    for line in targets:
        print(line)
    if failures:
        print(f"\n{len(failures)} runs failed (exit status 1)", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=1000, help="per run")
    parser.add_argument("--clients", type=int, default=6,
                        help="concurrent SMTP sessions (smtpd's listen queue holds 6)")
    parser.add_argument("--rcpts", type=int, default=1, help="recipients per message")
    parser.add_argument("--users", type=int, default=USERS, help="users in the table")
    parser.add_argument("--roots", default="6.8,7.6,7.9")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--spool", choices=("tmpfs", "disk"), default="tmpfs")
    parser.add_argument("--logs", help="keep smtpd's logs in this directory")
    parser.add_argument("--trace", action="store_true",
                        help="run smtpd with -v -T lookup (slower; to read the logs)")
    parser.add_argument("--profile", metavar="DIR",
                        help="sample the Python tables with py-spy into DIR and print where "
                             "their CPU goes (perturbs the timings)")
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fake-unknown", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [r for r in args.roots.split(",") if r != "6.8" and r not in CHROOTS]
    if unknown:
        parser.error(f"--roots: unknown generation {unknown[0]!r} (known: 6.8, "
                     f"{', '.join(CHROOTS)})")
    wanted = args.backends.split(",")
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        parser.error(f"--backends: unknown {unknown[0]!r} (known: {', '.join(BACKENDS)})")
    if "static" not in wanted:
        parser.error("--backends must include static: every ratio is taken against it")
    args.backends = ",".join(b for b in BACKENDS if b in wanted)  # static first
    for name in ("rounds", "messages", "clients", "rcpts", "users"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])
    if os.geteuid() != 0:
        print("smtpd_tables.py needs root (smtpd, chroot, namespaces)", file=sys.stderr)
        return 1
    if args.in_namespace:
        try:
            return bench(args)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
    with contextlib.ExitStack() as stack:  # in the host's mount namespace, shared
        for name in args.roots.split(","):
            if name in CHROOTS:
                if not (CHROOTS[name] / "usr/sbin/smtpd").exists():
                    print(f"bench failed: no smtpd in {CHROOTS[name]} (make chroot)",
                          file=sys.stderr)
                    return 1
                stack.enter_context(chroot_mounts(CHROOTS[name]))
        return in_private_network([sys.executable, __file__, "--in-namespace", *sys.argv[1:]],
                                  private_mounts=True)


if __name__ == "__main__":
    sys.exit(main())
