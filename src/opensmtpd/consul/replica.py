"""The live replica: an in-memory copy of one table prefix, and how fresh it is.

Lookups never touch the network: they read the current Snapshot (an immutable value
swapped in whole by the watcher thread, watcher.py). What a lookup answers:

- never synced yet, or the copy is older than ``max_staleness``: TempFail (smtpd
  answers 4xx, the sender retries) — never not-found, which would bounce mail;
- an empty prefix: TempFail unless ``allow_empty`` (a Consul token without read access
  gets an empty, ACL-filtered list rather than a 403);
- otherwise exactly what smtpd's own static table with these entries would answer
  (opensmtpd.table.static: matching per service, first match in key order, keys and
  regex patterns lower-cased).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..table import Service, TempFail
from ..table.metrics import TableMetrics
from ..table.static import StaticEntries
from .layout import KeyParser
from .listing import Listing

log = logging.getLogger("opensmtpd.consul")

ERROR_LOG_INTERVAL = 30.0  # repeated sync errors are logged at most this often


class Source(Protocol):
    """Where a replica reads from: ConsulClient or the embedded store."""

    def list(self, prefix: str, *, index: int = 0, wait: float | None = None) -> Listing: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Invalid:
    """A stored value that cannot be served (not UTF-8)."""

    reason: str


Value = str | Invalid


def decode_value(raw: bytes | None) -> Value:
    if raw is None:
        return ""
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return Invalid("value is not UTF-8")


@dataclass(frozen=True)
class Snapshot:
    """Every entry of a table prefix at one index, one static table per service (or one
    for every service, for a layout without <service>)."""

    index: int
    tables: dict[Service | None, StaticEntries[Value]]
    count: int
    ignored: tuple[str, ...] = ()

    @classmethod
    def build(cls, listing: Listing, parser: KeyParser) -> Snapshot:
        grouped: dict[Service | None, list[tuple[str, Value]]] = {}
        ignored = []
        for store_key, raw in listing.items:
            parsed = parser.parse(store_key)
            if parsed is None:
                ignored.append(store_key)
                continue
            service, key = parsed
            grouped.setdefault(service, []).append((key, decode_value(raw)))
        tables = {service: StaticEntries(entries) for service, entries in grouped.items()}
        count = sum(len(t) for t in tables.values())
        return cls(listing.index, tables, count, tuple(ignored))

    def table(self, service: Service) -> StaticEntries[Value] | None:
        return self.tables.get(service) or self.tables.get(None)

    def check(self, service: Service, key: str) -> bool:
        table = self.table(service)
        return table is not None and table.check(service, key)

    def lookup(self, service: Service, key: str) -> str | None:
        table = self.table(service)
        value = None if table is None else table.lookup(service, key)
        if isinstance(value, Invalid):
            raise TempFail(f"invalid stored value: {value.reason}")
        return value

    def fetch(self, service: Service) -> list[str]:
        table = self.table(service)
        return list(table.keys) if table is not None else []


@dataclass
class Replica:
    """The current copy of one prefix and how fresh it is."""

    prefix: str
    parser: KeyParser
    max_staleness: float
    allow_empty: bool = False
    clock: Callable[[], float] = time.monotonic
    snapshot: Snapshot | None = None
    synced_at: float | None = None
    last_error: str | None = None
    failing_since: float | None = None
    errors: int = 0
    _logged_error_at: float = field(default=-1e18, repr=False)
    _stale_logged: bool = field(default=False, repr=False)
    metrics: TableMetrics = field(default_factory=TableMetrics.off, repr=False)
    wallclock: Callable[[], float] = field(default=time.time, repr=False)

    def measured(self, metrics: TableMetrics) -> None:
        """Report to ``metrics`` from now on (docs/monitoring.md)."""
        self.metrics = metrics
        metrics.set("consul_max_staleness", self.max_staleness)
        if self.snapshot is not None and self.synced_at is not None:
            metrics.set("consul_entries", self.snapshot.count)
            metrics.set("consul_synced", self.wallclock() - (self.clock() - self.synced_at))
        metrics.set("consul_stale", self._staleness())

    def _staleness(self) -> int:
        """0 fresh, 1 serving a copy whose last sync failed, 2 answering error."""
        age = self.age()
        if age is None or age > self.max_staleness:
            return 2
        return 1 if self.errors else 0

    def apply(self, listing: Listing, *, full: bool = False) -> bool:
        """Install a successful read; returns whether the copy was rebuilt.

        ``full``: a non-blocking read of everything (first read, after an error, forced):
        rebuild even at the same index, since a restarted server may reuse indexes.
        """
        now = self.clock()
        previous = self.snapshot
        changed = full or previous is None or previous.index != listing.index
        if changed:
            snapshot = Snapshot.build(listing, self.parser)
            self.snapshot = snapshot
            if snapshot.ignored and (previous is None or previous.ignored != snapshot.ignored):
                log.warning("ignored %d key(s) under %r that do not fit the key layout, e.g. "
                            "%r", len(snapshot.ignored), self.prefix, snapshot.ignored[0][:200])
        if self.errors:
            down = now - (self.failing_since or now)
            log.warning("sync of %r recovered after %d error(s) in %.1fs", self.prefix,
                        self.errors, down)
        self.synced_at = now - listing.lag  # a stale read is as old as its server's view
        self.errors, self.last_error, self.failing_since = 0, None, None
        self._stale_logged = False
        if self.metrics.enabled:
            assert self.snapshot is not None
            self.metrics.set("consul_synced", self.wallclock() - listing.lag)
            self.metrics.set("consul_entries", self.snapshot.count)
            self.metrics.set("consul_stale", 0)
        if changed:
            assert self.snapshot is not None
            log.info("synced %r: %d entries at index %d%s", self.prefix, self.snapshot.count,
                     listing.index, " (first sync)" if previous is None else "")
        return changed

    def failed(self, exc: BaseException, retry_in: float | None = None) -> None:
        now = self.clock()
        self.errors += 1
        self.failing_since = self.failing_since or now
        self.last_error = str(exc) or type(exc).__name__
        if self.metrics.enabled:
            self.metrics.count("consul_errors")
            self.metrics.set("consul_stale", self._staleness())
        if self.errors == 1 or now - self._logged_error_at >= ERROR_LOG_INTERVAL:
            self._logged_error_at = now
            retry = f"; retrying in {retry_in:.1f}s" if retry_in is not None else ""
            log.warning("sync of %r failed (%d in a row): %s%s; %s", self.prefix, self.errors,
                        self.last_error, retry, self.state())

    def age(self) -> float | None:
        return None if self.synced_at is None else self.clock() - self.synced_at

    def state(self) -> str:
        """Cache age and staleness, for logs."""
        age = self.age()
        if age is None or self.snapshot is None:
            return "no copy yet (answering error)"
        verdict = ("too stale: answering error" if age > self.max_staleness
                   else "serving it")
        return (f"copy of index {self.snapshot.index} is {age:.1f}s old (max_staleness "
                f"{self.max_staleness:g}s, {verdict})")

    def current(self) -> Snapshot:
        """The snapshot to answer from, or TempFail when there is no trustworthy one."""
        snapshot, age = self.snapshot, self.age()
        if snapshot is None or age is None:
            why = f": {self.last_error}" if self.last_error else " (first sync in progress)"
            raise TempFail(f"table not synced yet{why}")
        if age > self.max_staleness:
            self.metrics.set("consul_stale", 2)
            if not self._stale_logged:
                self._stale_logged = True
                log.error("copy of %r is %.1fs old, past max_staleness %gs: answering error "
                          "until a sync succeeds (last error: %s)", self.prefix, age,
                          self.max_staleness, self.last_error)
            raise TempFail(f"copy is {age:.0f}s old (max_staleness {self.max_staleness:g}s); "
                           f"last sync error: {self.last_error}")
        if snapshot.count == 0 and not self.allow_empty:
            raise TempFail(f"no entry under {self.prefix!r} (a token without read access "
                           "sees an empty list; set allow_empty = true for a table that may be "
                           "empty)")
        return snapshot
