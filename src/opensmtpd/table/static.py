"""smtpd's static tables (``table_static.c``): which entry a key finds, per service.

One semantics for every table that holds its entries in memory (``MappingTable``,
table-consul's replica, the embedded store), identical to smtpd's own ``file:`` tables
(6.8 and 7.x alike; tests/e2e/table/test_static_semantics.py puts both side by side):

- keys are lower-cased when loaded (``lowercase()``, ASCII only), regex patterns too, and
  a key of 1024 bytes or more is dropped; smtpd lower-cases the looked-up key as well;
- ``domain``, ``netaddr``, ``mailaddr`` and ``regex`` find the **first entry in key
  order** (strcmp order: smtpd's dict is a sorted tree) that the service's matcher
  accepts (match.py); every other service finds the equal key only;
- check and lookup find the same entry (smtpd's check is a lookup without a value);
- fetch returns the keys in key order, round and round.

The linear scans smtpd does are replaced by indexes that find the same entry.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from .match import (
    ascii_lower,
    domain_match,
    mailaddr_match,
    parse_netaddr,
    regex_match,
    split_mailaddr,
)
from .wire.services import Service

V = TypeVar("V")
MAX_KEY = 1023  # table_static_priv_add: lowercase() into char[1024] or the key is dropped
# Services that find an entry by matching (domain wildcards, netmasks, regexes), not by
# the equal key only.
MATCHED = frozenset((Service.DOMAIN, Service.NETADDR, Service.MAILADDR, Service.REGEX))
_TAG = "+"


def _order(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


class StaticEntries(Generic[V]):
    """The entries of one static table, searched as smtpd searches them."""

    def __init__(self, entries: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        values: dict[str, V] = {}
        for key, value in items:
            lowered = ascii_lower(str(key))
            if len(_order(lowered)) <= MAX_KEY:
                values[lowered] = value  # dict_set(): a later duplicate replaces
        self.values = values
        self.keys = tuple(sorted(values, key=_order))
        self._rank = {key: rank for rank, key in enumerate(self.keys)}
        self._wild_domains: tuple[str, ...] | None = None
        self._networks: dict[tuple[int, int], dict[int, str]] | None = None
        self._mailaddrs: tuple[dict[tuple[str, str], str], tuple[str, ...]] | None = None
        self._cursor = itertools.count()

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, key: object) -> bool:
        return key in self.values

    # --- what smtpd asks ---

    def find(self, service: Service, key: str) -> str | None:
        """The entry ``key`` finds for ``service`` (table_static_lookup), or None."""
        subject = ascii_lower(key)
        if service not in MATCHED:
            return subject if subject in self.values else None
        if service is Service.DOMAIN:
            return self._find_domain(subject)
        if service is Service.NETADDR:
            return self._find_netaddr(subject)
        if service is Service.MAILADDR:
            return self._find_mailaddr(subject)
        return next((k for k in self.keys if regex_match(subject, k)), None)

    def check(self, service: Service, key: str) -> bool:
        return self.find(service, key) is not None

    def lookup(self, service: Service, key: str) -> V | None:
        """The value of the entry found; None when none is (or the entry has none)."""
        if service not in MATCHED:  # find(), inlined for the equal key: the hot path
            return self.values.get(key.lower() if key.isascii() else ascii_lower(key))
        found = self.find(service, key)
        return None if found is None else self.values[found]

    def fetch(self) -> str | None:
        """The next key in key order (table_static_fetch), None for an empty table."""
        if not self.keys:
            return None
        return self.keys[next(self._cursor) % len(self.keys)]

    # --- indexes: the same entry as smtpd's scan, without the scan ---

    def _first(self, candidates: Iterable[str | None]) -> str | None:
        rank = self._rank
        found = [c for c in candidates if c is not None and c in rank]
        return min(found, key=rank.__getitem__) if found else None

    def _find_domain(self, subject: str) -> str | None:
        wild = self._wild_domains
        if wild is None:  # the others match equal strings only
            wild = self._wild_domains = tuple(k for k in self.keys if "*" in k)
        exact = subject if subject in self.values else None
        limit = self._rank[exact] if exact is not None else len(self.keys)
        for key in wild:  # in key order: stop at the first, or past the equal key
            if self._rank[key] > limit:
                break
            if domain_match(subject, key):
                return key
        return exact

    def _build_netaddr(self) -> dict[tuple[int, int], dict[int, str]]:
        """(family, prefix length) -> masked network -> the first key in key order."""
        groups: dict[tuple[int, int], dict[int, str]] = {}
        for key in self.keys:
            parsed = parse_netaddr(key)
            if parsed is not None:
                version, address, bits = parsed
                width = 32 if version == 4 else 128
                network = address >> (width - bits) if bits else 0
                groups.setdefault((version, bits), {}).setdefault(network, key)
        return groups

    def _find_netaddr(self, subject: str) -> str | None:
        groups = self._networks
        if groups is None:
            groups = self._networks = self._build_netaddr()
        candidates: list[str | None] = [subject]  # strcasecmp(s1, s2) == 0
        parsed = parse_netaddr(subject)
        if parsed is not None:
            version, address, _ = parsed
            width = 32 if version == 4 else 128
            for (family, bits), networks in groups.items():
                if family == version:
                    candidates.append(networks.get(address >> (width - bits) if bits else 0))
        return self._first(candidates)

    def _build_mailaddr(self) -> tuple[dict[tuple[str, str], str], tuple[str, ...]]:
        """(user, domain) of the entries without a wildcard -> the first key with it;
        the entries with a ``*`` in their domain are scanned, in key order."""
        exact: dict[tuple[str, str], str] = {}
        wild = []
        for key in self.keys:
            parts = split_mailaddr(key)
            if parts is None:
                continue  # text_to_mailaddr() fails: the entry never matches
            if "*" in parts[1]:
                wild.append(key)
            else:
                exact.setdefault(parts, key)
        return exact, tuple(wild)

    def _find_mailaddr(self, subject: str) -> str | None:
        if self._mailaddrs is None:
            self._mailaddrs = self._build_mailaddr()
        exact, wild = self._mailaddrs
        parts = split_mailaddr(subject)
        if parts is None:
            return None
        user, domain = parts
        bare = user.split(_TAG, 1)[0]  # an entry without a +tag ignores the subject's
        candidates = [exact.get(("", "")), exact.get(("", domain))]
        for name in dict.fromkeys((user, bare)):
            candidates += [exact.get((name, "")), exact.get((name, domain))]
        found = self._first(candidates)
        limit = self._rank[found] if found is not None else len(self.keys)
        for key in wild:
            if self._rank[key] > limit:
                break
            if mailaddr_match(subject, key):
                return key
        return found
