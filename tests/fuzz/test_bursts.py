"""Peak RSS under a burst: 100,000 events written at once (no waiting for answers), for
sync and async filters and tables. Memory must stay bounded: the readers stop reading
while too much is in flight (docs/limits.md). Figures are printed with the fuzz figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import budget, procs
from .grammar import LineTableJudge
from .test_regressions import CONFIG, _rss_after_burst


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_filter_burst(mode: str, tmp_path: Path, figures: list[str]) -> None:
    rss, status = _rss_after_burst(tmp_path, mode, budget.BURST)
    figures.append(f"filter {mode}: {budget.BURST:,} link-connect reports in one write: "
                   f"peak RSS {rss:.0f} MB (100,000 live sessions, max_sessions' default)")
    assert status == 0
    assert rss < 150, f"peak RSS {rss:.0f} MB"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_table_burst(mode: str, tmp_path: Path, figures: list[str]) -> None:
    judge = LineTableJudge("native")
    proc = procs.table(tmp_path, f"burst-{mode}", imsg=False, on_output=judge.received,
                       mode=mode, deadline=30.0)  # memory, not deadlines, is measured here
    proc.send(CONFIG + b"config|tablename|t\nconfig|ready\n")
    assert proc.wait_until(lambda: judge.registered, 15), proc.stderr()
    data = b"".join(b"table|0.1|1.000000|t|lookup|alias|%08x|user%d\n" % (i, i)
                    for i in range(budget.BURST))
    with proc.lock:
        judge.sent(data)
    proc.send(data)
    assert proc.wait_until(lambda: judge.tally.answered == budget.BURST, 600), proc.stderr()
    rss = proc.rss_kb() / 1024
    figures.append(f"table native {mode}: {budget.BURST:,} lookups in one write: "
                   f"peak RSS {rss:.0f} MB, {judge.tally.summary()}")
    assert proc.close(timeout=30) == 0
    tally = judge.finish()
    assert not tally.problems and tally.kinds["found"] == budget.BURST, tally.details()
    assert rss < 100, f"peak RSS {rss:.0f} MB"
