"""table-procexec's metrics (docs/monitoring.md): child restarts, child deadline misses
and malformed child lines, from the real bridge and child processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opensmtpd.table import Error, Service
from opensmtpd.table.metrics import ENV

from ..table.test_metrics import _scrape, _value
from .conftest import Bridged
from .test_restart_wait import VUSER, fault_bridge, kill_child

USERINFO = Service.USERINFO


def test_restarts_deadline_misses_and_garbage_are_counted(
        bridge: Callable[..., Bridged], tmp_path: Path, data_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv(ENV, str(metrics_dir))
    bridged, mode = fault_bridge(bridge, tmp_path, data_file, deadline=1, restart_after=5)
    kill_child(bridged, tmp_path, 1)
    kill_child(bridged, tmp_path, 2)
    assert bridged.driver.lookup(USERINFO, "vuser") == VUSER  # the third child answers
    mode.write_text("hang:2")
    assert isinstance(bridged.driver.lookup(USERINFO, "vuser"), Error)  # its deadline
    bridged.wait_log("late reply to request")  # the child is done hanging
    mode.write_text("garbage")
    assert isinstance(bridged.driver.lookup(USERINFO, "vuser"), Error)
    scrape = _scrape(metrics_dir)
    assert _value(scrape, "opensmtpd_procexec_child_restarts_total", table="aliases") == 2
    assert _value(scrape, "opensmtpd_procexec_child_deadline_misses_total",
                  table="aliases") == 1
    assert _value(scrape, "opensmtpd_procexec_child_malformed_lines_total",
                  table="aliases") == 1
