"""The real table and filter processes, fuzzed over sockets exactly as smtpd connects them,
judged by grammar.py: every reply well-formed, each id one that was sent and answered
exactly once, alive until EOF and exit 0 then, peak RSS bounded."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from . import budget, targets
from .procs import REPO

EXAMPLE_FILTER = REPO / "examples" / "filter_example.py"
KEEP = not budget.LONG  # 100,000 inputs kept in memory would cost the harness gigabytes
TARGETS = {
    "table-native-sync": lambda tmp, rng, n: targets.run_line_table(
        tmp, rng, n, dialect="native", mode="sync", keep=KEEP),
    "table-native-async": lambda tmp, rng, n: targets.run_line_table(
        tmp, rng, n, dialect="native", mode="async", keep=KEEP),
    "table-2020-sync": lambda tmp, rng, n: targets.run_line_table(
        tmp, rng, n, dialect="2020", mode="sync", keep=KEEP),
    "table-imsg-sync": lambda tmp, rng, n: targets.run_imsg(tmp, rng, n, keep=KEEP),
    "table-imsg-async": lambda tmp, rng, n: targets.run_imsg(tmp, rng, n, mode="async",
                                                             keep=KEEP),
    "table-procexec": lambda tmp, rng, n: targets.run_imsg(tmp, rng, n, bridge=True,
                                                           keep=KEEP),
    "filter-sync": lambda tmp, rng, n: targets.run_filter(tmp, rng, n, mode="sync", keep=KEEP),
    "filter-async": lambda tmp, rng, n: targets.run_filter(tmp, rng, n, mode="async",
                                                           keep=KEEP),
    "filter-message": lambda tmp, rng, n: targets.run_filter(tmp, rng, n, mode="message",
                                                             keep=KEEP),
    "filter-async-message": lambda tmp, rng, n: targets.run_filter(
        tmp, rng, n, mode="async-message", keep=KEEP),
    "filter-example": lambda tmp, rng, n: targets.run_filter(
        tmp, rng, n, script=EXAMPLE_FILTER, keep=KEEP),
}


def keep_crasher(name: str, seed: int, outcome: targets.Outcome, tmp: Path) -> Path:
    """The stream that broke a process, as a corpus file (replayed by test_corpus.py)."""
    where = Path(os.environ.get("FUZZ_CORPUS_OUT") or tmp)
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}-{seed}.json"
    entry: dict[str, object] = {"target": name, "seed": seed, "inputs": budget.PROCESS_INPUTS,
                                 "found": outcome.figures()}
    if outcome.chunks:  # small runs keep the stream itself; long ones its seed
        entry["chunks"] = [c.hex() for c in outcome.chunks]
    path.write_text(json.dumps(entry))
    return path


@pytest.mark.parametrize("name", list(TARGETS))
def test_process_survives_hostile_input(name: str, tmp_path: Path,
                                        figures: list[str]) -> None:
    seed = budget.SEED + sum(map(ord, name))
    outcome = TARGETS[name](tmp_path, random.Random(seed), budget.PROCESS_INPUTS)
    figures.append(outcome.figures())
    if not outcome.ok():
        path = keep_crasher(name, seed, outcome, tmp_path)
        pytest.fail(f"{outcome.explain()}\ninput stream kept in {path}")
    # the harness itself is checked: most inputs must have been answered as smtpd expects
    assert outcome.tally.answered > budget.PROCESS_INPUTS // 5, outcome.figures()
    assert len(outcome.tally.kinds) >= 3, outcome.figures()  # varied answers, not one kind
