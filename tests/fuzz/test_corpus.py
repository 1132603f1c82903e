"""Input streams kept as regression cases (corpus/*.json), replayed against their
process and judged like a fuzz run. ``make fuzz`` writes a failing run's stream to
FUZZ_CORPUS_OUT; a crasher worth keeping is moved here once fixed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from . import targets
from .procs import REPO

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = sorted(CORPUS.glob("*.json"))


def replay(entry: dict[str, object], tmp: Path) -> targets.Outcome:
    if "chunks" not in entry:  # a long run's crasher: its seed regenerates the stream
        from .test_processes import TARGETS
        seed, count = str(entry["seed"]), str(entry["inputs"])
        return TARGETS[str(entry["target"])](tmp, random.Random(int(seed)), int(count))
    chunks = [bytes.fromhex(c) for c in entry["chunks"]]  # type: ignore[attr-defined]
    rng = random.Random(0)
    kind = str(entry["target"])
    if kind.startswith("table-native") or kind.startswith("table-2020"):
        dialect = "native" if "native" in kind else "2020"
        return targets.run_line_table(tmp, rng, 0, dialect=dialect,
                                      mode="async" if "async" in kind else "sync",
                                      replay=chunks)
    if kind.startswith("table-imsg") or kind == "table-procexec":
        return targets.run_imsg(tmp, rng, 0, bridge=kind == "table-procexec",
                                mode="async" if "async" in kind else "sync", replay=chunks)
    script = REPO / "examples" / "filter_example.py" if kind == "filter-example" else None
    return targets.run_filter(tmp, rng, 0, mode=kind.removeprefix("filter-"), script=script,
                              replay=chunks)


def test_corpus_is_not_empty() -> None:
    assert len(FILES) >= 5  # the five reproducers of issue 9 at least


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_corpus_entry(path: Path, tmp_path: Path) -> None:
    entry = json.loads(path.read_text())
    outcome = replay(entry, tmp_path)
    assert outcome.ok(), f"{entry.get('why', '')}\n{outcome.explain()}"
    assert outcome.tally.answered >= int(entry.get("answers", 1)), outcome.figures()
