"""Fuzz runs against real processes: one generator of smtpd's side, one judge, one process.

Each ``run_*`` function drives its process the way smtpd does — a table gets one request
and the reply is awaited before the next (smtpd is synchronous, table-protocols.md §1.6,
§3.5); a filter gets reports and data lines without waiting and queries answered per
batch (filter-protocol.md §4, §5.4) — with a share of the inputs bent by ``inputs.py``.
The process must stay alive until EOF, exit 0 then, answer what the judge says it must,
and never write what the judge refuses.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import inputs, procs
from .grammar import FilterJudge, ImsgJudge, LineTableJudge, Tally

MUST_TIMEOUT = 10.0  # seconds a request smtpd would wait on may take (deadlines are 0.2 s)
RSS_LIMIT_MB = 200  # a fuzz run's peak RSS; baseline Python + library is ~25 MB


@dataclass
class Outcome:
    target: str
    tally: Tally
    status: int | None = None  # exit status after EOF (None: it had to be killed)
    died_early: bool = False  # exited or stopped reading before EOF
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    stray_stdout: bytes = b""
    stderr: str = ""
    chunks: list[bytes] = field(default_factory=list)  # what was sent, for a corpus file

    @property
    def crashes(self) -> int:
        return int(self.died_early or self.status != 0)

    @property
    def log_broken(self) -> bool:
        """A log call that failed (e.g. data used as a format string): logging prints
        this banner and a traceback instead of the line."""
        return "--- Logging error ---" in self.stderr

    def ok(self) -> bool:
        return (not self.crashes and not self.tally.problems and not self.stray_stdout
                and self.peak_rss_mb < RSS_LIMIT_MB and not self.log_broken)

    def figures(self) -> str:
        return (f"{self.target}: {self.tally.summary()}, {self.crashes} crashes, "
                f"peak RSS {self.peak_rss_mb:.0f} MB, {self.seconds:.1f} s")

    def explain(self) -> str:
        return (f"{self.figures()}\nstatus={self.status} died_early={self.died_early} "
                f"log broken={self.log_broken} "
                f"stray stdout={self.stray_stdout[:80]!r}\n{self.tally.details()}\n"
                f"stderr tail:\n{self.stderr[-3000:]}")


class _Run:
    """A process, its judge and the bookkeeping of one fuzz run."""

    def __init__(self, target: str, judge: Any, start: Callable[[Callable[[bytes], None]],
                                                                procs.Process],
                 rng: random.Random, keep: bool) -> None:
        self.target = target
        self.judge = judge
        self.rng = rng
        self.keep = keep
        self.chunks: list[bytes] = []
        self.started = time.monotonic()
        self.proc = start(judge.received)
        self.dead = False

    def send(self, data: bytes, **note: Any) -> Any:
        """Note ``data`` with the judge (one logical write), then write it, maybe in pieces."""
        with self.proc.lock:
            due = self.judge.sent(data, **note)
        if self.keep:
            self.chunks.append(data)
        for piece in inputs.split(self.rng, data):
            if not self.proc.send(piece):
                self.dead = True
                break
        return due

    def wait(self, done: Callable[[], bool], timeout: float = MUST_TIMEOUT) -> bool:
        if self.dead:
            return False
        return self.proc.wait_until(done, timeout)

    def finish(self) -> Outcome:
        proc = self.proc
        died = self.dead or not proc.alive() or proc.eof
        proc.rss_kb()
        status = proc.close()
        with proc.lock:
            tally = self.judge.finish()
        return Outcome(self.target, tally, status, died, proc.peak_rss_kb / 1024,
                       time.monotonic() - self.started, proc.stray_stdout, proc.stderr(),
                       self.chunks)


def _mutated(rng: random.Random, line: bytes, rate: float) -> bytes:
    return inputs.mutate_line(rng, line) if rng.random() < rate else line


def run_line_table(tmp: Path, rng: random.Random, count: int, *, dialect: str, mode: str,
                   rate: float = 0.25, keep: bool = False,
                   replay: list[bytes] | None = None) -> Outcome:
    """table_fuzz.py on the native protocol (with its handshake) or the 2020 dialect."""
    judge = LineTableJudge(dialect)
    run = _Run(f"table {dialect} {mode}", judge, lambda out: procs.table(
        tmp, f"{dialect}-{mode}", imsg=False, on_output=out, mode=mode), rng, keep)
    if replay is not None:
        return _replay(run, replay)
    if dialect == "native":
        for line in inputs.native_handshake(rng, hostile=rng.random() < 0.2):
            run.send(line)
        run.wait(lambda: judge.registered)
        ids = inputs.Ids(rng, 8)
        make = lambda: inputs.native_request(rng, ids)  # noqa: E731
    else:
        ids = inputs.Ids(rng, 16)
        make = lambda: inputs.procexec2020_request(rng, ids)  # noqa: E731
    for _ in range(count):
        if run.dead:
            break
        required = run.send(_mutated(rng, make(), rate), must=True)
        if required is not None and not run.wait(
                lambda ident=required: judge.answered(ident)):  # type: ignore[misc]
            break  # unanswered: reported by the judge; waiting again would only repeat it
        elif judge.barrier is not None:
            run.wait(lambda mark=judge.barrier: judge.passed(mark), 2.0)  # type: ignore[misc]
    return run.finish()


def run_imsg(tmp: Path, rng: random.Random, count: int, *, bridge: bool = False,
             mode: str = "sync", rate: float = 0.25, keep: bool = False,
             replay: list[bytes] | None = None) -> Outcome:
    """A table (or table-procexec and its misbehaving child) as smtpd 6.8 drives it."""
    judge = ImsgJudge()
    if bridge:
        target = "table-procexec (misbehaving child)"
        start = lambda out: procs.bridge(tmp, "bridge", on_output=out)  # noqa: E731
        triggers = inputs.BRIDGE_TRIGGERS
    else:
        target = f"table imsg {mode}"
        start = lambda out: procs.table(  # noqa: E731
            tmp, f"imsg-{mode}", imsg=True, on_output=out, mode=mode)
        triggers = inputs.TRIGGERS
    run = _Run(target, judge, start, rng, keep)
    if replay is not None:
        return _replay(run, replay)
    run.send(inputs.imsg_open())
    run.wait(lambda: not judge.expected)
    for _ in range(count):
        if run.dead:
            break
        message = inputs.imsg_request(rng, triggers)
        if rng.random() < rate:
            message = rng.choice((inputs.imsg_mutate(rng, message), inputs.imsg_open(
                rng.choice((b"fuzz", b"a%zb%s", b"\xff" * 3000)), rng.choice((2, 2, 3)))))
        run.send(message)
        if not run.wait(lambda: not judge.expected):
            break
    return run.finish()


def run_filter(tmp: Path, rng: random.Random, count: int, *, mode: str = "sync",
               script: Path | None = None, version: str | None = None, rate: float = 0.2,
               keep: bool = False, replay: list[bytes] | None = None) -> Outcome:
    """A filter fed interleaved smtp-in (and smtp-out) sessions, queries answered per batch."""
    version = version or rng.choice(("0.4", "0.6", "0.7", "0.7"))
    judge = FilterJudge(smtp_out=version != "0.4", report_decision=version == "0.7")
    name = script.stem if script is not None else f"filter {mode}"
    run = _Run(f"{name} ({version})" if replay is None else name, judge,
               lambda out: procs.filter_process(tmp, name.replace(" ", "-"), on_output=out,
                                                script=script, mode=mode), rng, keep)
    if replay is not None:
        return _replay(run, replay)
    for line in inputs.filter_handshake(rng, version, hostile=rng.random() < 0.2):
        run.send(line)
    run.wait(lambda: judge.registered)
    tokens = {phase: rng.randbytes(8).hex().encode() for phase in inputs_phases()}
    live: list[inputs.Session] = []
    sent = 0
    while sent < count and not run.dead:
        batch = []
        for _ in range(rng.randrange(1, 24)):
            if len(live) < 8 and (not live or rng.random() < 0.1):
                subsystem = b"smtp-out" if version != "0.4" and rng.random() < 0.1 \
                    else b"smtp-in"
                live.append(inputs.Session(rng, version.encode(), tokens, subsystem))
            session = rng.choice(live)
            line, _waits = session.steps.pop(0)
            if session.subsystem == b"smtp-out" and line.startswith(b"filter|"):
                line = b""  # smtp-out has no filter queries (§4.1)
            if not session.steps:
                live.remove(session)
            if line:
                batch.append(_mutated(rng, line, rate))
        for line in batch:
            run.send(line, must=True)
            sent += 1
        if not run.wait(lambda: judge.pending_must() == 0):
            break
    return run.finish()


def inputs_phases() -> tuple[str, ...]:
    from .grammar import PHASES
    return PHASES


def _replay(run: _Run, chunks: list[bytes]) -> Outcome:
    """A stored stream (corpus/), sent chunk by chunk as recorded, then EOF."""
    judge = run.judge
    for chunk in chunks:
        due = run.send(chunk, **({} if isinstance(judge, ImsgJudge) else {"must": True}))
        if isinstance(judge, ImsgJudge):
            run.wait(lambda: not judge.expected)
        elif isinstance(judge, LineTableJudge):
            if due is not None:
                run.wait(lambda ident=due: judge.answered(ident))  # type: ignore[misc]
            elif not judge.registered:
                run.wait(lambda: judge.registered, 2.0)
        else:
            run.wait(lambda: judge.pending_must() == 0 and judge.registered, 2.0)
    return run.finish()
