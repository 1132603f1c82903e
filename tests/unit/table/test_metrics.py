"""Table metrics through prometheus_client's multiprocess mode, with real processes:
series of several table processes summed at scrape time, counters that survive their
process (never backwards), live gauges that leave with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from opensmtpd.table.metrics import ENV, Collector, TableMetrics, forget_dead

WRITER = """
import os, sys, time
from opensmtpd.table.metrics import TableMetrics
m = TableMetrics("aliases")
assert m.enabled
for _ in range(int(sys.argv[1])):
    m.answered("lookup", "alias", "found", 0.002)
m.answered("check", "domain", "error", 0.2)
m.deadline_missed("check", "domain")
m.in_flight(1)
m.set("consul_stale", 1)
print("ready", flush=True)
time.sleep(60)
"""


def _writer(path: Path, lookups: int) -> subprocess.Popen[str]:
    env = {**os.environ, ENV: str(path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(lookups)], env=env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def _scrape(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(Collector(str(path)))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float | None:
    return scrape.get((name, tuple(sorted(labels.items()))))


def test_off_by_default_and_every_call_is_a_no_op(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(ENV, raising=False)
    metrics = TableMetrics("t")
    assert not metrics.enabled
    metrics.answered("lookup", "alias", "found", 0.1)
    metrics.in_flight(1)
    metrics.count("child_restarts")


def test_processes_summed_counters_kept_live_gauges_dropped(tmp_path: Path) -> None:
    first, second = _writer(tmp_path, 3), _writer(tmp_path, 2)
    try:
        scrape = _scrape(tmp_path)
        found = dict(table="aliases", op="lookup", service="alias", result="found")
        assert _value(scrape, "opensmtpd_table_requests_total", **found) == 5
        assert _value(scrape, "opensmtpd_table_deadline_misses_total", table="aliases",
                      op="check", service="domain") == 2
        assert _value(scrape, "opensmtpd_table_requests_in_flight", table="aliases") == 2
        assert _value(scrape, "opensmtpd_table_handler_duration_seconds_count",
                      table="aliases", op="lookup", service="alias") == 5
        assert _value(scrape, "opensmtpd_table_consul_stale", table="aliases") == 1
        first.send_signal(signal.SIGKILL)  # smtpd restarts a table: no goodbye
        first.wait(10)
        scrape = _scrape(tmp_path)
        assert _value(scrape, "opensmtpd_table_requests_total", **found) == 5  # not backwards
        assert _value(scrape, "opensmtpd_table_requests_in_flight", table="aliases") == 1
        second.send_signal(signal.SIGKILL)
        second.wait(10)
        scrape = _scrape(tmp_path)
        assert _value(scrape, "opensmtpd_table_requests_total", **found) == 5
        assert _value(scrape, "opensmtpd_table_requests_in_flight", table="aliases") is None
        assert _value(scrape, "opensmtpd_table_consul_stale", table="aliases") is None
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait(10)


def test_a_reused_pid_does_not_inherit_a_dead_process_gauges(tmp_path: Path) -> None:
    stale = tmp_path / f"gauge_livesum_{os.getpid()}.db"
    stale.write_bytes(b"")
    assert forget_dead(str(tmp_path), alive=lambda pid: pid != os.getpid()) == [os.getpid()]
    assert not stale.exists()


def test_an_unwritable_directory_turns_metrics_off_without_raising(tmp_path: Path) -> None:
    env = {**os.environ, ENV: str(tmp_path / "missing")}
    result = subprocess.run(
        [sys.executable, "-c", "from opensmtpd.table.metrics import TableMetrics\n"
         "m = TableMetrics('t'); m.answered('lookup', 'alias', 'found', 0.1)\n"
         "print(m.enabled)"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "False\n", result.stderr
    assert "table metrics off" in result.stderr


def test_a_table_process_counts_what_it_answered(tmp_path: Path, make_backend, start,  # type: ignore[no-untyped-def]
                                                 monkeypatch) -> None:
    from opensmtpd.table import Error, Found, NotFound, Service

    script = make_backend("""
        import time
        from opensmtpd.table import Table, TempFail
        table = Table(deadline=0.3)

        @table.lookup("alias")
        def alias(key):
            if key == "boom":
                raise TempFail("backend down")
            if key == "slow":
                time.sleep(1)
            return {"root": "gilles"}.get(key)

        table.run()
    """)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv(ENV, str(metrics_dir))
    for protocol in ("native", "imsg"):
        driver = start(script, protocol=protocol, table=f"aliases-{protocol}")
        assert driver.lookup(Service.ALIAS, "root") == Found("gilles")
        assert driver.lookup(Service.ALIAS, "root") == Found("gilles")
        assert driver.lookup(Service.ALIAS, "nobody") == NotFound()
        assert isinstance(driver.lookup(Service.ALIAS, "boom"), Error)
        assert isinstance(driver.lookup(Service.ALIAS, "slow"), Error)  # the deadline
        scrape = _scrape(metrics_dir)
        table = f"aliases-{protocol}"
        base = dict(table=table, op="lookup", service="alias")
        assert _value(scrape, "opensmtpd_table_requests_total", **base, result="found") == 2
        assert _value(scrape, "opensmtpd_table_requests_total", **base,
                      result="not-found") == 1
        assert _value(scrape, "opensmtpd_table_requests_total", **base, result="error") == 2
        assert _value(scrape, "opensmtpd_table_handler_exceptions_total", **base) == 1
        assert _value(scrape, "opensmtpd_table_deadline_misses_total", **base) == 1
        assert _value(scrape, "opensmtpd_table_handler_duration_seconds_count", **base) == 5
        assert _value(scrape, "opensmtpd_table_requests_in_flight", table=table) == 0

