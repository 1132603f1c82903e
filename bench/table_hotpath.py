#!/usr/bin/env python3
"""The Python part of one native lookup, in process: the library's path next to the least
plain Python can do, with no pipe and no other process (no syscalls but the reply's write).

Each request goes through the path the runtime's reader takes when smtpd sends one
request and waits: the line is fed to the codec, parsed, dispatched (deadline entry,
``MappingTable`` answer, encoding, the lock, the reply written to /dev/null), then the
codec is asked again and has nothing. The "minimal loop" does what bench/table_lookups.py's
minimal native backend does per line (split, dict get, format, write to /dev/null).

    .venv/bin/python bench/table_hotpath.py [--count 200000] [--src DIR]

``--src DIR`` imports opensmtpd from DIR/src (e.g. an export of another commit) to
compare two versions on the same machine. Prints CPU µs per lookup (process time: load
from other processes does not count, but CPU frequency and cache sharing still do).

Exact and repeatable whatever the load: instructions per lookup under callgrind, as the
difference of two counts (start-up cancels out)::

    for n in 20000 40000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
        .venv/bin/python bench/table_hotpath.py --count $n --only library; done
    # (Ir of /tmp/cg.40000 - Ir of /tmp/cg.20000) / 20000 = instructions per lookup

Timings are printed, never judged.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

LINE = b"table|0.1|1700000000.000000|passwd|lookup|userinfo|0000abcd|alice\n"
HANDSHAKE = (b"config|smtpd-version|7.6.0\nconfig|protocol|0.1\nconfig|tablename|passwd\n"
             b"config|ready\n")
VALUE = "1000:1000:/home/alice"


def library(count: int, out: int) -> float:
    from opensmtpd.table import MappingTable
    from opensmtpd.table._runtime import Server

    table = MappingTable({"alice": VALUE}, services=["userinfo"])
    server = Server(table, protocol="native", infd=0, outfd=out)
    server._start(HANDSHAKE)
    codec = server.codec
    assert codec is not None
    server._other(codec.next_event())  # type: ignore[arg-type]  # Hello: registers
    receive_data, next_event, dispatch = codec.receive_data, codec.next_event, server._dispatch
    started = time.process_time()
    for _ in range(count):
        receive_data(LINE)
        dispatch(next_event())  # type: ignore[arg-type]
        if next_event() is not None:
            raise SystemExit("the codec returned a second event for one line")
    return time.process_time() - started


def minimal(count: int, out: int) -> float:
    data = {b"alice": VALUE.encode()}
    write, buf = os.write, b""
    started = time.process_time()
    for _ in range(count):
        *lines, buf = (buf + LINE).split(b"\n")
        replies = []
        for line in lines:
            f = line.split(b"|", 7)
            if f[4] == b"lookup" and (value := data.get(f[7])):
                replies.append(b"lookup-result|%s|found|%s\n" % (f[6], value))
        write(out, b"".join(replies))
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200000)
    parser.add_argument("--src", help="import opensmtpd from DIR/src")
    parser.add_argument("--only", choices=("library", "minimal"))
    args = parser.parse_args(argv)
    if args.src:
        sys.path.insert(0, os.path.join(args.src, "src"))
    out = os.open(os.devnull, os.O_WRONLY)
    runs = [("library", library), ("minimal", minimal)]
    costs = {}
    for name, run in runs:
        if args.only in (None, name):
            costs[name] = run(args.count, out) / args.count * 1e6
            print(f"{name:<8} {costs[name]:6.2f} µs CPU per lookup")
    if len(costs) == 2:
        print(f"library / minimal: {costs['library'] / costs['minimal']:.2f}x")
    import opensmtpd
    print(f"(opensmtpd from {os.path.dirname(opensmtpd.__file__)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
