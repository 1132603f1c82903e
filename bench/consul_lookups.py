#!/usr/bin/env python3
"""Alias lookups from table-consul's replica next to one HTTP GET per lookup (the seed's design).

One run, one real Consul (Debian bullseye's 1.8.7 dev agent on loopback, from
``make consul``), the same keys, every backend driven the way smtpd drives a table: one
request, wait for the reply (opensmtpd.table.driver.Driver), for the line protocol of
smtpd >= 7.6 ("native") and the imsg of smtpd <= 7.5:

  replica          table-consul: lookups answered from its in-memory copy
  GET per lookup   the seed's design: a new HTTP connection and GET per lookup (urllib)
  GET keep-alive   the same with one persistent HTTP connection: the best case of that
                   design, shown so the ratio is not won against a strawman
  embedded         table-consul on the embedded SQLite store (same replica)
  floor            the library's MappingTable with the same aliases in a dict: the
                   smtpd<->table round trip alone, which every design pays

All are ``opensmtpd.table.Table`` backends, so the protocol cost is the same and the
difference is where the answer comes from. Keys are drawn at random from the table (every
lookup finds its value, and every answer is checked). Rounds of N lookups run interleaved
(backend order rotated per round); the median round's p50, p99 and lookups/s are printed,
with CPU per lookup of the table process plus the Consul agent (/proc/PID/stat, summed
over all rounds: the seed's design makes Consul work for every lookup).

End to end, a lookup also pays the smtpd<->table round trip (a Python driver here; two
process wake-ups), the same for every design: a second table measures the lookup itself,
in process — ``ConsulTable.answer()`` on a synced replica next to the seed's GET function
(new connection, and keep-alive) against the same agent. Timings are reported, never
asserted.

    .venv/bin/python bench/consul_lookups.py [--lookups 3000] [--rounds 3] [--keys 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opensmtpd.consul.backend import ConsulTable
from opensmtpd.consul.config import load
from opensmtpd.consul.store import EmbeddedStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harness
from harness.consul import Agent, dev_agent

from opensmtpd.table import Found, Op, Request, Service
from opensmtpd.table.driver import Driver

TABLE = "aliases"
TARGET_P99_MS = 1.0
TARGET_RATIO = 20.0

# The seed's design, on the library (argv[1] = Consul's address).
GET_PER_LOOKUP = """\
import base64, json, sys, urllib.error, urllib.request
from opensmtpd.table import Table

ADDRESS = sys.argv[1]
table = Table()


@table.lookup("alias")
def alias(key, request):
    url = f"http://{ADDRESS}/v1/kv/{request.table}/alias/{key}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            entry = json.loads(response.read())[0]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return base64.b64decode(entry["Value"]).decode()


table.run()
"""

GET_KEEP_ALIVE = """\
import base64, http.client, json, sys
from opensmtpd.table import Table

HOST, PORT = sys.argv[1].rsplit(":", 1)
connection = http.client.HTTPConnection(HOST, int(PORT), timeout=10)
table = Table()


@table.lookup("alias")
def alias(key, request):
    connection.request("GET", f"/v1/kv/{request.table}/alias/{key}")
    response = connection.getresponse()
    body = response.read()
    if response.status == 404:
        return None
    return base64.b64decode(json.loads(body)[0]["Value"]).decode()


table.run()
"""


# The round-trip floor: the same aliases in a dict (argv[1] = a JSON file).
FLOOR = """\
import json, sys
from opensmtpd.table import MappingTable

MappingTable(json.load(open(sys.argv[1])), services=["alias"]).run()
"""


class BenchError(Exception):
    """A backend could not be set up or answered wrongly: the bench fails loudly."""


@dataclass
class Backend:
    name: str
    protocol: str
    command: list[str]
    config: str
    driver: Driver | None = None
    rounds: list[tuple[float, list[int]]] = field(default_factory=list)  # (seconds, ns)
    cpu_ticks: int = 0  # table process + Consul agent, over all rounds


def cpu_ticks(pid: int) -> int:
    """utime + stime of a whole process, in clock ticks (proc(5) fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


def run_round(backend: Backend, keys: list[str], expected: dict[str, str],
              consul_pid: int) -> None:
    driver = backend.driver
    assert driver is not None
    pids = (driver.process.pid, consul_pid)
    ticks = sum(cpu_ticks(pid) for pid in pids)
    latencies = []
    clock = time.perf_counter_ns
    started = clock()
    for key in keys:
        before = clock()
        reply = driver.lookup(Service.ALIAS, key)
        latencies.append(clock() - before)
        if reply != Found(expected[key]):
            raise BenchError(f"{backend.name}/{backend.protocol}: {key} -> {reply}")
    backend.rounds.append(((clock() - started) / 1e9, latencies))
    backend.cpu_ticks += sum(cpu_ticks(pid) for pid in pids) - ticks


def in_process(agent: Agent, keys: list[str], expected: dict[str, str],
               rounds: int) -> dict[str, Backend]:
    """The lookup itself, without the smtpd<->table round trip: same keys, same agent."""
    config = load(None, env={"CONSUL_HTTP_ADDR": agent.address})
    table = ConsulTable(dataclasses.replace(config, store="consul"))
    namespace: dict[str, Any] = {}
    address = repr(agent.address)
    exec(GET_PER_LOOKUP.replace("table.run()", "").replace("sys.argv[1]", address),
         namespace)  # the seed's function, as is
    per_get = namespace["alias"]
    keep: dict[str, Any] = {}
    exec(GET_KEEP_ALIVE.replace("table.run()", "").replace("sys.argv[1]", address), keep)
    keep_alive = keep["alias"]

    def replica(key: str, request: Request) -> str | None:
        reply = table.answer(request)
        return reply.value if isinstance(reply, Found) else None

    designs = {"replica": replica, "GET per lookup": per_get, "GET keep-alive": keep_alive}
    results = {name: Backend(name, "in-proc", [], "") for name in designs}
    try:
        for key in list(expected)[:50]:  # warm up; the replica's first sync
            for fn in designs.values():
                fn(key, Request(Op.LOOKUP, "w", TABLE, Service.ALIAS, key))
        clock = time.perf_counter_ns
        for number in range(rounds):
            order = list(designs.items())
            shift = number % len(order)
            for name, fn in order[shift:] + order[:shift]:
                latencies = []
                started = clock()
                for key in keys:
                    request = Request(Op.LOOKUP, "1", TABLE, Service.ALIAS, key)
                    before = clock()
                    value = fn(key, request)
                    latencies.append(clock() - before)
                    if value != expected[key]:
                        raise BenchError(f"{name} in process: {key} -> {value!r}")
                results[name].rounds.append(((clock() - started) / 1e9, latencies))
    finally:
        table.close()
    return results


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6  # ms


def median_round(backend: Backend) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, lookups/s) of the round with the median throughput."""
    stats = sorted((len(lat) / seconds, percentile(lat, 0.5), percentile(lat, 0.99))
                   for seconds, lat in backend.rounds)
    rate, p50, p99 = stats[len(stats) // 2]
    return p50, p99, rate


def start(backend: Backend, log: Path) -> None:
    with open(log, "ab") as stderr:
        backend.driver = Driver(backend.command, protocol=backend.protocol, table=TABLE,
                                config=backend.config, timeout=30, stderr=stderr.fileno())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=3000, help="lookups per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=1000, help="aliases in the table")
    args = parser.parse_args()
    rng = random.Random(2020)
    table_consul = str(Path(sys.executable).parent / "table-consul")

    with tempfile.TemporaryDirectory(prefix="bench-consul-") as tmp:
        directory = Path(tmp)
        agent: Agent = dev_agent(directory / "consul")
        agent.start()
        backends: list[Backend] = []
        try:
            expected = {f"user{i}": f"user{i}@example.org" for i in range(args.keys)}
            database = directory / "kv.sqlite3"
            store = EmbeddedStore(str(database))
            for key, value in expected.items():
                agent.put(f"{TABLE}/alias/{key}", value)
                store.put(f"{TABLE}/alias/{key}", value.encode())
            consul_conf = directory / "consul.conf"
            consul_conf.write_text(f"store = consul\naddress = {agent.address}\n")
            embedded_conf = directory / "embedded.conf"
            embedded_conf.write_text(f"database = {database}\n")
            per_get = script(directory, "get_per_lookup.py", GET_PER_LOOKUP)
            keep_alive = script(directory, "get_keep_alive.py", GET_KEEP_ALIVE)
            floor = script(directory, "floor.py", FLOOR)
            floor_data = directory / "aliases.json"
            floor_data.write_text(json.dumps(expected))
            for protocol in ("native", "imsg"):
                backends += [
                    Backend("replica", protocol, [table_consul], str(consul_conf)),
                    Backend("GET per lookup", protocol, [per_get], agent.address),
                    Backend("GET keep-alive", protocol, [keep_alive], agent.address),
                    Backend("embedded", protocol, [table_consul], str(embedded_conf)),
                    Backend("floor", protocol, [floor], str(floor_data)),
                ]
            log = directory / "backends.log"
            assert agent.process is not None
            consul_pid = agent.process.pid
            for backend in backends:
                start(backend, log)
                run_round(backend, list(expected)[:50], expected, consul_pid)  # warm up
                backend.rounds.clear()
                backend.cpu_ticks = 0
            for number in range(args.rounds):
                keys = [rng.choice(list(expected)) for _ in range(args.lookups)]
                shift = number % len(backends)
                for backend in backends[shift:] + backends[:shift]:
                    run_round(backend, keys, expected, consul_pid)
            keys = [rng.choice(list(expected)) for _ in range(args.lookups)]
            inproc = in_process(agent, keys, expected, args.rounds)
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        finally:
            for backend in backends:
                if backend.driver is not None:
                    backend.driver.close()
            agent.stop()
        report(backends, inproc, args)
    return 0


def report(backends: list[Backend], inproc: dict[str, Backend],
           args: argparse.Namespace) -> None:
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    print(f"Consul 1.8.7 dev agent on loopback, {args.keys} aliases, {args.lookups} lookups x "
          f"{args.rounds} rounds (median round)\n")
    print("End to end, driven as smtpd drives a table (CPU: table process + Consul agent):")
    print(f"{'protocol':8} {'backend':16} {'p50 ms':>9} {'p99 ms':>9} {'lookups/s':>11} "
          f"{'CPU us/lookup':>14}")
    results = {}
    for backend in backends:
        p50, p99, rate = median_round(backend)
        results[(backend.protocol, backend.name)] = (p50, p99, rate)
        cpu = backend.cpu_ticks * tick_us / (args.lookups * args.rounds)
        print(f"{backend.protocol:8} {backend.name:16} {p50:9.3f} {p99:9.3f} {rate:11.0f} "
              f"{cpu:14.0f}")
    print("\nThe lookup itself, in process (no smtpd<->table round trip):")
    print(f"{'':8} {'design':16} {'p50 ms':>9} {'p99 ms':>9} {'lookups/s':>11}")
    for name, backend in inproc.items():
        p50, p99, rate = median_round(backend)
        results[("in-proc", name)] = (p50, p99, rate)
        print(f"{'in-proc':8} {name:16} {p50:9.4f} {p99:9.4f} {rate:11.0f}")
    print()
    for protocol in ("native", "imsg", "in-proc"):
        p50, p99, rate = results[(protocol, "replica")]
        for other in ("GET per lookup", "GET keep-alive", "floor"):
            if (protocol, other) not in results:
                continue
            o50, o99, orate = results[(protocol, other)]
            print(f"{protocol:8} replica vs {other:15} {rate / orate:6.1f}x lookups/s, "
                  f"p50 {o50 / p50:5.1f}x lower, p99 {o99 / p99:5.1f}x lower")
    for protocol in ("native", "imsg", "in-proc"):
        p99 = results[(protocol, "replica")][1]
        ratio = results[(protocol, "replica")][2] / results[(protocol, "GET per lookup")][2]
        print(f"{protocol:8} targets: replica p99 {p99:.3f} ms < {TARGET_P99_MS:g} ms "
              f"{'met' if p99 < TARGET_P99_MS else 'MISSED'}; {ratio:.1f}x >= "
              f"{TARGET_RATIO:g}x the seed's design {'met' if ratio >= TARGET_RATIO else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
