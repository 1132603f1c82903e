"""table-consul's metrics (docs/monitoring.md): replica age, entries, sync errors and
staleness, from a real replica of the embedded store in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from opensmtpd.table.metrics import ENV

from ..table.test_metrics import _scrape, _value

CONSUL_REPLICA = """
import sys
from opensmtpd.consul.layout import Layout
from opensmtpd.consul.replica import Replica
from opensmtpd.consul.store import EmbeddedSource, EmbeddedStore
from opensmtpd.table.metrics import TableMetrics

store = EmbeddedStore(sys.argv[1])
store.put("aliases/alias/root", b"gilles")
store.put("aliases/alias/abuse", b"root")
now = [1000.0]
replica = Replica("aliases/", Layout("<table>/<service>/<key>").parser("aliases"), 60.0,
                  clock=lambda: now[0], wallclock=lambda: 1.7e9 + now[0])
replica.measured(TableMetrics("aliases"))
for step in sys.stdin:
    if step.startswith("sync"):
        replica.apply(EmbeddedSource(sys.argv[1], 0.2).list("aliases/"))
    elif step.startswith("fail"):
        replica.failed(OSError("consul down"))
    elif step.startswith("wait"):
        now[0] += float(step.split()[1])
    print("ok", flush=True)
"""


def test_table_consul_replica_age_errors_and_staleness(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, ENV: str(metrics_dir)}
    replica = subprocess.Popen([sys.executable, "-c", CONSUL_REPLICA, str(tmp_path / "kv")],
                               env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert replica.stdin is not None and replica.stdout is not None

    def step(line: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        replica.stdin.write(line + "\n")  # type: ignore[union-attr]
        replica.stdin.flush()  # type: ignore[union-attr]
        assert replica.stdout.readline() == "ok\n"  # type: ignore[union-attr]
        return _scrape(metrics_dir)

    try:
        scrape = step("sync")
        assert _value(scrape, "opensmtpd_table_consul_entries", table="aliases") == 2
        assert _value(scrape, "opensmtpd_table_consul_stale", table="aliases") == 0
        assert _value(scrape, "opensmtpd_table_consul_max_staleness_seconds",
                      table="aliases") == 60
        assert _value(scrape, "opensmtpd_table_consul_last_sync_timestamp_seconds",
                      table="aliases") == 1.7e9 + 1000
        step("wait 10")
        scrape = step("fail")  # the last good copy is served: stale 1
        assert _value(scrape, "opensmtpd_table_consul_stale", table="aliases") == 1
        assert _value(scrape, "opensmtpd_table_consul_sync_errors_total", table="aliases") == 1
        step("wait 55")
        scrape = step("fail")  # 65 s old, past max_staleness: answering error
        assert _value(scrape, "opensmtpd_table_consul_stale", table="aliases") == 2
        assert _value(scrape, "opensmtpd_table_consul_sync_errors_total", table="aliases") == 2
        scrape = step("sync")
        assert _value(scrape, "opensmtpd_table_consul_stale", table="aliases") == 0
        assert _value(scrape, "opensmtpd_table_consul_last_sync_timestamp_seconds",
                      table="aliases") == 1.7e9 + 1065
    finally:
        replica.stdin.close()
        replica.wait(10)
