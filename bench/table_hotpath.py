#!/usr/bin/env python3
"""The Python part of one table lookup, in process: the library's path next to the least
plain Python can do, with no pipe and no other process (no syscalls but the reply's write).

Each request goes through the path the runtime's reader takes when smtpd sends one
request and waits: the line is fed to the codec, parsed, dispatched (deadline entry,
``MappingTable`` answer, encoding, the lock, the reply written to /dev/null), then the
codec is asked again and has nothing. The "minimal loop" does what bench/table_lookups.py's
minimal backend of the same protocol does per request (frame or split, dict get, encode,
write to /dev/null).

    .venv/bin/python bench/table_hotpath.py [--count 200000] [--protocol native|imsg]
                                             [--src DIR] [--only library|minimal]

``--src DIR`` imports opensmtpd from DIR/src (e.g. an export of another commit) to
compare two versions on the same machine. Prints CPU µs per lookup (process time: load
from other processes does not count, but CPU frequency and cache sharing still do).

Exact and repeatable whatever the load: instructions per lookup under callgrind, as the
difference of two counts (start-up cancels out)::

    for n in 20000 40000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
        .venv/bin/python bench/table_hotpath.py --count $n --only library; done
    # (Ir of /tmp/cg.40000 - Ir of /tmp/cg.20000) / 20000 = instructions per lookup

Timings are printed, never judged; the exit status says whether the library's first reply
was right (the rest go to /dev/null).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time

LINE = b"table|0.1|1700000000.000000|passwd|lookup|userinfo|0000abcd|alice\n"
HANDSHAKE = (b"config|smtpd-version|7.6.0\nconfig|protocol|0.1\nconfig|tablename|passwd\n"
             b"config|ready\n")
VALUE = "1000:1000:/home/alice"


def requests(protocol: str) -> tuple[bytes, bytes]:
    """(handshake, one lookup) as smtpd sends them."""
    if protocol == "native":
        return HANDSHAKE, LINE
    from opensmtpd.table import Op, Service
    from opensmtpd.table.wire import imsg

    return imsg.open_request("passwd"), imsg.request(Op.LOOKUP, Service.USERINFO, "alice")


def right_reply(protocol: str, data: bytes) -> bool:
    if protocol == "native":
        return data == f"lookup-result|0000abcd|found|{VALUE}\n".encode()
    return data[16:] == struct.pack("=i", 1) + VALUE.encode() + b"\0"  # imsg: found


def library(count: int, out: int, protocol: str) -> float:
    from opensmtpd.table import MappingTable
    from opensmtpd.table._runtime import Server

    handshake, request = requests(protocol)
    table = MappingTable({"alice": VALUE}, services=["userinfo"])
    check, into = os.pipe()  # the first reply is read back and judged, the rest discarded
    server = Server(table, protocol=protocol, infd=0, outfd=into)
    server._start(handshake)
    codec = server.codec
    assert codec is not None
    server._other(codec.next_event())  # type: ignore[arg-type]  # Hello: registers
    os.read(check, 65536)  # the registration
    receive_data, next_event, dispatch = codec.receive_data, codec.next_event, server._dispatch
    receive_data(request)
    dispatch(next_event())  # type: ignore[arg-type]
    reply = os.read(check, 65536)
    if not right_reply(protocol, reply):
        raise SystemExit(f"wrong reply from the library: {reply!r}")
    os.close(check)
    os.close(into)
    server.outfd = out
    started = time.process_time()
    for _ in range(count):
        receive_data(request)
        dispatch(next_event())  # type: ignore[arg-type]
        if next_event() is not None:
            raise SystemExit("the codec returned a second event for one request")
    return time.process_time() - started


def minimal(count: int, out: int, protocol: str) -> float:
    data = {b"alice": VALUE.encode()}
    write, buf = os.write, b""
    request = requests(protocol)[1]
    started = time.process_time()
    if protocol == "native":
        for _ in range(count):
            *lines, buf = (buf + request).split(b"\n")
            replies = []
            for line in lines:
                f = line.split(b"|", 7)
                if f[4] == b"lookup" and (value := data.get(f[7])):
                    replies.append(b"lookup-result|%s|found|%s\n" % (f[6], value))
            write(out, b"".join(replies))
        return time.process_time() - started
    header, result, pid = struct.Struct("=IHHII"), struct.Struct("=i"), os.getpid()
    for _ in range(count):  # bench/table_lookups.py's MINIMAL_IMSG, one message a read
        buf += request
        while len(buf) >= 16 and len(buf) >= (n := header.unpack_from(buf)[1]):
            kind, payload, buf = buf[0], buf[16:n], buf[n:]
            value = data.get(payload[12:-1]) if kind == 6 else None
            body = result.pack(1) + value + b"\0" if value else result.pack(0)
            write(out, header.pack(0, 16 + len(body), 0, 0, pid) + body)
    return time.process_time() - started


def parts(count: int, out: int, protocol: str, only: str | None = None) -> None:
    """Where the library's time goes: each stage of the path timed alone, best of 5
    (``only``: that stage alone, run once, for callgrind)."""
    import threading

    from opensmtpd.table import MappingTable
    from opensmtpd.table._runtime import Server
    from opensmtpd.table.wire.events import Answer

    handshake, request = requests(protocol)
    table = MappingTable({"alice": VALUE}, services=["userinfo"])
    server = Server(table, protocol=protocol, infd=0, outfd=out)
    server._start(handshake)
    codec = server.codec
    assert codec is not None
    server._other(codec.next_event())  # type: ignore[arg-type]
    receive_data, next_event, answer, send = (codec.receive_data, codec.next_event,
                                              table.answer, codec.send)
    receive_data(request)
    event = next_event()
    reply = answer(event)  # type: ignore[arg-type]
    data = send(tuple.__new__(Answer, (event.op, event.id, reply)))  # type: ignore[union-attr]
    lock, inflight, monotonic, write = threading.Lock(), {}, time.monotonic, os.write

    def codec_in() -> None:
        receive_data(request)
        next_event()
        next_event()

    def table_answer() -> None:
        answer(event)  # type: ignore[arg-type]

    def codec_out() -> None:
        send(tuple.__new__(Answer, (event.op, event.id, reply)))  # type: ignore[union-attr]

    def write_reply() -> None:
        write(out, data)

    def bookkeeping() -> None:  # what _dispatch adds: the deadline entry and the lock
        started = monotonic()
        inflight["1"] = (event, started + 5.0, True)
        lock.acquire()
        try:
            inflight.pop("1", None)
        finally:
            lock.release()

    def empty() -> None:
        pass

    stages = [("codec in (feed, parse, ask again)", codec_in), ("Table.answer", table_answer),
              ("codec out (encode the reply)", codec_out), ("os.write to /dev/null", write_reply),
              ("deadline entry + lock (as _dispatch)", bookkeeping),
              ("one empty Python call (loop overhead)", empty)]
    for name, stage in stages:
        if only is not None and stage.__name__ != only:
            continue
        best = float("inf")
        for _ in range(5 if only is None else 1):
            started = time.process_time()
            for _ in range(count):
                stage()
            best = min(best, time.process_time() - started)
        print(f"  {name:<40} {best / count * 1e6:6.2f} µs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200000)
    parser.add_argument("--src", help="import opensmtpd from DIR/src")
    parser.add_argument("--only", choices=("library", "minimal"))
    parser.add_argument("--protocol", choices=("native", "imsg"), default="native")
    parser.add_argument("--parts", action="store_true",
                        help="also time each stage of the library's path alone")
    parser.add_argument("--stage", choices=("codec_in", "table_answer", "codec_out",
                                            "write_reply", "bookkeeping", "empty"),
                        help="run only this stage, once (instructions under callgrind)")
    args = parser.parse_args(argv)
    if args.src:
        sys.path.insert(0, os.path.join(args.src, "src"))
    out = os.open(os.devnull, os.O_WRONLY)
    if args.stage:
        parts(args.count, out, args.protocol, args.stage)
        return 0
    runs = [("library", library), ("minimal", minimal)]
    costs = {}
    for name, run in runs:
        if args.only in (None, name):
            costs[name] = run(args.count, out, args.protocol) / args.count * 1e6
            print(f"{name:<8} {costs[name]:6.2f} µs CPU per lookup")
    if len(costs) == 2:
        print(f"library / minimal: {costs['library'] / costs['minimal']:.2f}x")
    if args.parts:
        print("stages of the library's path, each alone (includes one Python call each):")
        parts(args.count, out, args.protocol)
    import opensmtpd
    print(f"(opensmtpd from {os.path.dirname(opensmtpd.__file__)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
