"""What a store returns for a prefix: every key and raw value, at an index."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Listing:
    """Every key under a prefix at a store index (Consul's X-Consul-Index).

    Values are raw bytes; None for a key whose value is null. ``lag``: how old the data
    already was when read (Consul's X-Consul-LastContact on a stale read: seconds since
    the answering server last heard from the leader).
    """

    index: int
    items: tuple[tuple[str, bytes | None], ...]
    lag: float = 0.0
