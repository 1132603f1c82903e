"""The live replica: an in-memory copy of one table prefix, kept current by a watcher.

Lookups never touch the network: they read the current Snapshot (an immutable value
swapped in whole by the watcher thread). What a lookup answers:

- never synced yet, or the copy is older than ``max_staleness``: TempFail (smtpd
  answers 4xx, the sender retries) — never not-found, which would bounce mail;
- an empty prefix: TempFail unless ``allow_empty`` (a Consul token without read access
  gets an empty, ACL-filtered list rather than a 403);
- otherwise smtpd's own static-table semantics (table_static.c): CHECK matches with the
  service's matcher (wildcards, CIDR, mailaddr forms, regex); LOOKUP is an exact key for
  most services, the first matching key in key order for domain, netaddr, mailaddr and
  regex; FETCH rotates over the keys.

The watcher follows Consul's blocking-query rules: reuse X-Consul-Index, reset to 0 when
it goes backwards or after an error, never block on an index below 1, back off with
jitter on errors.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..table import Service, TempFail, matches
from ..table.services import is_netaddr
from .layout import KeyParser
from .listing import Listing

log = logging.getLogger("opensmtpd.consul")

ERROR_LOG_INTERVAL = 30.0  # repeated sync errors are logged at most this often
_MATCHED_LOOKUPS = (Service.DOMAIN, Service.NETADDR, Service.MAILADDR, Service.REGEX)


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


# Which entries can match a subject other than an equal one, per service: the rest are
# found by the exact dict alone (keys and subjects are lower-case, as smtpd's are).
_PATTERN_FILTERS: dict[Service, Callable[[str], bool]] = {
    Service.DOMAIN: lambda key: "*" in key,
    Service.NETADDR: is_netaddr,
    Service.MAILADDR: lambda key: True,
}


class Bucket:
    """The entries of one service (or of every service, for a layout without <service>).

    Keys are lower-cased (smtpd lower-cases what it looks up), except as regex patterns:
    lower-casing ``\\D`` or ``\\S`` would change their meaning.
    """

    __slots__ = ("_patterns", "entries", "keys", "originals")

    def __init__(self, entries: dict[str, tuple[str, Value]]) -> None:
        self.entries = {lower: value for lower, (_, value) in entries.items()}
        self.originals = {lower: original for lower, (original, _) in entries.items()}
        self.keys = tuple(sorted(self.entries))
        self._patterns: dict[Service, tuple[str, ...]] = {}

    def patterns(self, service: Service) -> tuple[str, ...]:
        """The entries to run the service's matcher on (regex: as written)."""
        found = self._patterns.get(service)
        if found is None:
            if service is Service.REGEX:
                found = tuple(sorted(self.originals.values()))
            else:
                keep = _PATTERN_FILTERS.get(service)
                found = tuple(k for k in self.keys if keep(k)) if keep else ()
            self._patterns[service] = found
        return found


@dataclass(frozen=True)
class Snapshot:
    """Every entry of a table prefix at one index."""

    index: int
    buckets: dict[Service | None, Bucket]
    count: int
    ignored: tuple[str, ...] = ()

    @classmethod
    def build(cls, listing: Listing, parser: KeyParser) -> Snapshot:
        grouped: dict[Service | None, dict[str, tuple[str, Value]]] = {}
        ignored = []
        for store_key, raw in listing.items:
            parsed = parser.parse(store_key)
            if parsed is None:
                ignored.append(store_key)
                continue
            service, key = parsed
            grouped.setdefault(service, {})[key.lower()] = (key, decode_value(raw))
        buckets = {service: Bucket(entries) for service, entries in grouped.items()}
        count = sum(len(b.entries) for b in buckets.values())
        return cls(listing.index, buckets, count, tuple(ignored))

    def bucket(self, service: Service) -> Bucket | None:
        return self.buckets.get(service) or self.buckets.get(None)

    def check(self, service: Service, key: str) -> bool:
        bucket = self.bucket(service)
        if bucket is None:
            return False
        key = key.lower()
        if service is not Service.REGEX and key in bucket.entries:
            return True  # equal strings match for every other service's matcher
        return matches(service, key, bucket.patterns(service))

    def lookup(self, service: Service, key: str) -> str | None:
        bucket = self.bucket(service)
        if bucket is None:
            return None
        key = key.lower()
        if service is Service.REGEX:  # table_static_lookup: first match in key order
            pattern = next((p for p in bucket.patterns(service)
                            if matches(service, key, (p,))), None)
            found = None if pattern is None else pattern.lower()
        elif service in _MATCHED_LOOKUPS:
            found = next((k for k in bucket.keys if matches(service, key, (k,))), None)
        else:
            found = key if key in bucket.entries else None
        if found is None:
            return None
        value = bucket.entries[found]
        if isinstance(value, Invalid):
            raise TempFail(f"invalid stored value: {value.reason}")
        return value

    def fetch(self, service: Service) -> list[str]:
        bucket = self.bucket(service)
        return list(bucket.keys) if bucket is not None else []


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


def next_index(previous: int, returned: int) -> int:
    """Consul's rules: reset when the index goes backwards; never block on an index < 1."""
    if returned < previous:
        return 0
    return max(returned, 1)


class Watcher:
    """One thread keeping ``replica`` current from ``source`` with blocking queries."""

    def __init__(self, replica: Replica, source: Source, *, wait: float, retry_min: float,
                 retry_max: float, rng: random.Random | None = None) -> None:
        self.replica, self.source = replica, source
        self.wait, self.retry_min, self.retry_max = wait, retry_min, retry_max
        self.rng = rng or random.Random()
        self.first_attempt = threading.Event()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._lock = threading.Lock()  # one apply() at a time (watcher vs. forced re-sync)
        self._thread: threading.Thread | None = None

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with jitter: in [d/2, d], d = min(max, min * 2^(n-1))."""
        ceiling = min(self.retry_max, self.retry_min * 2.0 ** min(attempt - 1, 30))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"watch {self.replica.prefix}")
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _apply(self, listing: Listing, *, full: bool) -> None:
        with self._lock:
            self.replica.apply(listing, full=full)

    def resync(self) -> Snapshot:
        """Read the whole prefix now (``smtpctl update table``); raises on failure."""
        try:
            listing = self.source.list(self.replica.prefix)
        except Exception as exc:
            with self._lock:
                self.replica.failed(exc)
            raise
        self._apply(listing, full=True)
        self._kick.set()  # a watcher in back-off retries at once
        log.info("forced re-sync of %r: index %d", self.replica.prefix, listing.index)
        assert self.replica.snapshot is not None
        return self.replica.snapshot

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                listing = self.source.list(self.replica.prefix, index=index,
                                           wait=self.wait if index > 0 else None)
            except Exception as exc:
                if self._stop.is_set():
                    return  # stop() closed the source under a pending read
                delay = self.backoff(self.replica.errors + 1)
                with self._lock:
                    self.replica.failed(exc, delay)
                self.first_attempt.set()
                index = 0  # after an outage, read everything: the server may be new
                self._kick.clear()
                self._kick.wait(delay)
                continue
            self._apply(listing, full=index == 0)
            self.first_attempt.set()
            new = next_index(index, listing.index)
            quick = time.monotonic() - started < min(1.0, self.wait / 10)
            if index > 0 and new == index and quick:
                self._stop.wait(self.retry_min)  # a server not honouring the wait: no hot loop
            index = new
