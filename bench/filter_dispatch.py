#!/usr/bin/env python3
"""What the filter's dispatch costs per event, in process (no pipe, no smtpd).

The dispatch is written once for plain and ``async def`` handlers: one coroutine per
event, driven without an event loop when every handler is plain (opensmtpd/filter/
_dispatch.py, _runtime.py). This prints, from the recorded smtpd 6.8 and 7.6 lines
(tests/unit/filter/data/), replayed many times through ``Filter.feed`` in 64 KiB reads:

1. CPU per event for report events (one plain handler each), filter queries (a plain
   handler returning None) and data lines (a plain handler returning None);
2. what the coroutine mechanism alone costs per event: ``settle`` over the same events
   with a dispatch that does nothing, as a coroutine, next to a plain-call twin of that
   loop — the share of the per-event costs above that one-coroutine-per-event adds.

Timings are printed, never asserted.

    .venv/bin/python bench/filter_dispatch.py [--repeat 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opensmtpd.filter import Filter, _runtime
from opensmtpd.filter.wire import Event, FilterSide

DATA = Path(__file__).resolve().parents[1] / "tests" / "unit" / "filter" / "data"
HANDSHAKE = (b"config|smtpd-version|7.6.0-portable\nconfig|protocol|0.7\n"
             b"config|subsystem|smtp-in\nconfig|subsystem|smtp-out\nconfig|ready\n")
READ = 65536


def _kind(line: str) -> str:
    fields = line.split("|")
    if fields[0] != "filter":
        return fields[0]
    return "data-line" if fields[4] == "data-line" else "query"


def lines(kind: str) -> list[str]:
    """The recorded lines of one kind: report, query or data-line."""
    return [line for name in ("smtpd-6.8.in", "smtpd-7.6.in")
            for line in (DATA / name).read_text().splitlines() if _kind(line) == kind]


def build(kind: str) -> Filter:
    f = Filter()
    if kind == "report":
        f.on_report("*", subsystem="*")(lambda session, event: None)
    elif kind == "query":
        f.on_phase("connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to",
                   "data", "rset", "quit", "noop", "commit")(lambda session, query: None)
    else:
        f.on_data_line(lambda session, line: None)
    return f


def cpu(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def through_feed(kind: str, repeat: int) -> tuple[float, int]:
    """CPU seconds and events for ``repeat`` replays of the recorded lines of ``kind``."""
    chunk = ("\n".join(lines(kind)) + "\n").encode()
    stream = chunk * repeat
    count = len(lines(kind)) * repeat
    f = build(kind)
    f.feed(HANDSHAKE)

    def run() -> None:
        for start in range(0, len(stream), READ):
            f.feed(stream[start:start + READ])
    return cpu(run), count


class _Nothing:
    """A dispatch target that does nothing: what remains is the mechanism."""

    side = FilterSide()
    awaits = False
    name = None
    is_async = False

    async def dispatch(self, event: Event) -> bytes:
        return b""

    def answer_anyway(self, event: Event) -> bytes:
        return b""


def _plain_twin(events: list[Event]) -> bytes:
    """``settle``'s loop with a plain call instead of an awaited coroutine."""
    out = []
    for event in events:
        try:
            out.append(_nothing_plain(event))
            continue
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException:
            pass
        out.append(b"")
    return b"".join(out)


def _nothing_plain(event: Event) -> bytes:
    return b""


def mechanism(count: int) -> tuple[float, float]:
    """CPU seconds for ``count`` events: (coroutine per event, plain call per event)."""
    side = FilterSide()
    side.receive_data(HANDSHAKE + ("\n".join(lines("report")) + "\n").encode())
    events = list(iter(side.next_event, None))[1:]
    batches = max(1, count // len(events))
    target = _Nothing()
    coro = cpu(lambda: [_runtime.drive(_runtime.settle(target, events))
                        for _ in range(batches)])
    plain = cpu(lambda: [_plain_twin(events) for _ in range(batches)])
    return coro / (batches * len(events)), plain / (batches * len(events))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("opensmtpd").setLevel(logging.CRITICAL)
    print(f"python {sys.version.split()[0]}; median of {args.rounds} rounds, CPU time")
    per_event: dict[str, float] = {}
    for kind in ("report", "query", "data-line"):
        runs = [through_feed(kind, args.repeat) for _ in range(args.rounds)]
        seconds = statistics.median(s for s, _ in runs)
        per_event[kind] = seconds / runs[0][1]
        print(f"{kind:<10} {runs[0][1]:>9,} events  {per_event[kind] * 1e6:6.2f} µs/event "
              f"through Filter.feed")
    rounds = [mechanism(200_000) for _ in range(args.rounds)]
    coro = statistics.median(c for c, _ in rounds)
    plain = statistics.median(p for _, p in rounds)
    extra = coro - plain
    print(f"mechanism: {coro * 1e9:.0f} ns/event as a coroutine, {plain * 1e9:.0f} ns as a "
          f"plain call: one coroutine per event adds {extra * 1e9:.0f} ns "
          f"({', '.join(f'{extra / v:.1%} of a {k}' for k, v in per_event.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
