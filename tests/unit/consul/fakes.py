"""A scriptable in-memory store with Consul's blocking-query behaviour, for unit tests."""

from __future__ import annotations

import threading

from opensmtpd.consul.listing import Listing


class FakeSource:
    def __init__(self, items: dict[str, bytes | None] | None = None, index: int = 10) -> None:
        self.items = dict(items or {})
        self.index = index
        self.error: Exception | None = None
        self.calls: list[tuple[int, float | None]] = []
        self._cond = threading.Condition()

    def set(self, key: str, value: bytes | None) -> None:
        with self._cond:
            self.items[key] = value
            self.index += 1
            self._cond.notify_all()

    def fail(self, error: Exception | None) -> None:
        with self._cond:
            self.error = error
            self._cond.notify_all()

    def restart(self, index: int) -> None:
        """A new server: its index starts over."""
        with self._cond:
            self.index = index
            self._cond.notify_all()

    def list(self, prefix: str, *, index: int = 0, wait: float | None = None) -> Listing:
        with self._cond:
            self.calls.append((index, wait))
            if index and wait:
                self._cond.wait_for(lambda: self.index != index or self.error is not None,
                                    timeout=wait)
            if self.error is not None:
                raise self.error
            items = tuple(sorted((k, v) for k, v in self.items.items() if k.startswith(prefix)))
            return Listing(self.index, items)

    def close(self) -> None:
        pass
