"""Table metrics, off by default: what every table process built on the library does,
for Prometheus (docs/monitoring.md).

smtpd starts its tables itself, several per smtpd, restarted at will: a port per process
would not do. Each table process writes its series to a directory shared by all of them
(prometheus_client's multiprocess mode: one memory-mapped file per process and type),
and one endpoint aggregates the directory when it is scraped (filter-prometheus
``-table-metrics DIR``). Turned on by ``OPENSMTPD_METRICS_DIR=DIR`` in smtpd's
environment (tables inherit it), DIR writable by smtpd's user.

Dead processes: their counter files stay, so a sum never goes backwards when a table is
restarted (and a process that gets a dead one's PID carries its counters on); their
gauges are "live" ones, dropped from the sum when the process is gone (``collect``).

Labels are closed sets (operation, service, result) or the table's name from
smtpd.conf: never a key, a value, an address or a user name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("opensmtpd.table")

ENV = "OPENSMTPD_METRICS_DIR"
RESULTS = ("found", "not-found", "error", "ok")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
_families: dict[str, Any] | None = None
_disabled: str | None = None  # why metrics are off although asked for


def directory() -> str | None:
    """The metrics directory, or None when metrics are off."""
    return os.environ.get(ENV) or None


def _load() -> dict[str, Any] | None:
    """The metric families of this process, created once; None when metrics are off or
    cannot be (logged once: metrics never stop a table)."""
    global _families, _disabled
    if _families is not None or _disabled is not None:
        return _families
    path = directory()
    if path is None:
        _disabled = "off"
        return None
    # prometheus_client picks its value class when first imported: the directory first
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        if not os.access(path, os.W_OK | os.X_OK):
            raise OSError(f"{path} is not a directory this user ({os.getuid()}) can write")
        from prometheus_client import Counter, Gauge, Histogram, values

        # in case it was imported before the directory was set
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        # a PID of ours may be a dead process's: its live gauges are not ours
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]
    except (ImportError, OSError) as exc:
        _disabled = str(exc)
        log.error("table metrics off: %s (%s=%s)", exc, ENV, path)
        return None
    labels = ("table", "op", "service")
    _families = {
        "requests": Counter("opensmtpd_table_requests", "Requests answered, by result",
                            [*labels, "result"]),
        "latency": Histogram("opensmtpd_table_handler_duration_seconds",
                             "Time from a request to its answer", labels,
                             buckets=LATENCY_BUCKETS),
        "deadline": Counter("opensmtpd_table_deadline_misses",
                            "Requests answered error because their handler missed the "
                            "deadline", labels),
        "exceptions": Counter("opensmtpd_table_handler_exceptions",
                              "Handlers that raised (answered error)", labels),
        "in_flight": Gauge("opensmtpd_table_requests_in_flight",
                           "Requests received and not answered yet", ["table"],
                           multiprocess_mode="livesum"),
        "consul_synced": Gauge("opensmtpd_table_consul_last_sync_timestamp_seconds",
                               "When table-consul's replica last synced (Unix time)",
                               ["table"], multiprocess_mode="livemax"),
        "consul_errors": Counter("opensmtpd_table_consul_sync_errors",
                                 "Failed syncs of table-consul's replica", ["table"]),
        "consul_stale": Gauge("opensmtpd_table_consul_stale",
                              "1 while table-consul serves a copy whose last sync failed, "
                              "2 once it is past max_staleness (answering error)",
                              ["table"], multiprocess_mode="livemax"),
        "consul_entries": Gauge("opensmtpd_table_consul_entries",
                                "Entries in table-consul's replica", ["table"],
                                multiprocess_mode="livemax"),
        "consul_max_staleness": Gauge("opensmtpd_table_consul_max_staleness_seconds",
                                      "table-consul's max_staleness setting", ["table"],
                                      multiprocess_mode="livemax"),
        "child_restarts": Counter("opensmtpd_procexec_child_restarts",
                                  "Children table-procexec started again", ["table"]),
        "child_deadline": Counter("opensmtpd_procexec_child_deadline_misses",
                                  "Requests the child did not answer in time", ["table"]),
        "child_malformed": Counter("opensmtpd_procexec_child_malformed_lines",
                                   "Lines from the child that answer nothing", ["table"]),
    }
    return _families


class TableMetrics:
    """The series of one table process; every method is a no-op when metrics are off.

    Label children are cached: one dict lookup per request instead of ``labels()``.
    """

    def __init__(self, table: str = "", *, enabled: bool = True) -> None:
        self.table = table or "unnamed"
        self._families = _load() if enabled else None
        self._children: dict[tuple[str, ...], Any] = {}

    @classmethod
    def off(cls) -> TableMetrics:
        """Metrics that record nothing (nothing is imported)."""
        return cls(enabled=False)

    @property
    def enabled(self) -> bool:
        return self._families is not None

    def rename(self, table: str) -> None:
        """The table's name is known from the handshake on."""
        self.table = table or "unnamed"
        self._children.clear()

    def _child(self, family: str, *labels: str) -> Any:
        key = (family, *labels)
        child = self._children.get(key)
        if child is None:
            assert self._families is not None
            child = self._families[family].labels(self.table, *labels)
            if len(self._children) < 4096:
                self._children[key] = child
        return child

    def answered(self, op: str, service: str, result: str, seconds: float) -> None:
        if self._families is not None:
            self._child("requests", op, service, result).inc()
            self._child("latency", op, service).observe(seconds)

    def deadline_missed(self, op: str, service: str) -> None:
        if self._families is not None:
            self._child("deadline", op, service).inc()

    def handler_raised(self, op: str, service: str) -> None:
        if self._families is not None:
            self._child("exceptions", op, service).inc()

    def in_flight(self, delta: int) -> None:
        if self._families is not None:
            self._child("in_flight").inc(delta)

    def count(self, family: str) -> None:
        """One more of a per-table counter (consul_errors, child_restarts, …)."""
        if self._families is not None:
            self._child(family).inc()

    def set(self, family: str, value: float) -> None:
        """A per-table gauge (consul_synced, consul_stale, consul_entries, …)."""
        if self._families is not None:
            self._child(family).set(value)


# --- the scrape side: one endpoint for every table process ---

_PID = re.compile(r"_(\d+)\.db\Z")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead(path: str, alive: Callable[[int], bool] = _alive) -> list[int]:
    """Drop the live gauges of processes that are gone (their counters stay)."""
    from prometheus_client.multiprocess import mark_process_dead

    dead = set()
    for file in Path(path).glob("gauge_live*_*.db"):
        match = _PID.search(file.name)
        if match and not alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        with contextlib.suppress(OSError):
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


class Collector:
    """Every table process's series from ``path``, for a registry that is scraped
    (filter-prometheus's). Reads the directory at each scrape; never fails a scrape."""

    def __init__(self, path: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = path
        self._collector = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Any:
        try:
            forget_dead(self.path)
            return list(self._collector.collect())  # type: ignore[no-untyped-call]
        except Exception as exc:  # a half-written file, a vanished directory: no series
            log.warning("table metrics from %s unreadable: %s", self.path, exc)
            return []

    def describe(self) -> list[Any]:
        return []
