"""The watcher: one thread keeping a Replica current with Consul's blocking queries.

It follows Consul's rules: reuse X-Consul-Index, reset to 0 when it goes backwards or
after an error, never block on an index below 1, back off with jitter on errors.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from .listing import Listing
from .replica import Replica, Snapshot, Source

log = logging.getLogger("opensmtpd.consul")


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
