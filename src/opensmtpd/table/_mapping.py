"""A ready-made backend over a mapping, a list or a file in smtpd's ``file:`` format,
answering exactly as smtpd's own static table with the same entries would (static.py).

File format, read as ``parse_table_line()`` of smtpd 7.x reads it: one entry per line,
``#`` comments. The first entry decides the kind (``# @list`` before it forces a list): a
mapping when it has a key, then white space or ``:``, then a value; a list otherwise. In
a list every line is one whole key (separators included, as smtpd takes it; a warning
names the line). In a mapping a line without a value is an error naming file and line,
as it is for smtpd. A mapping key may be bracketed (``[::1] value``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ._table import Table, TempFail, _services
from .match import ascii_lower
from .static import MATCHED, StaticEntries
from .wire.events import Op
from .wire.services import ALL_BUT_AUTH, Service

log = logging.getLogger("opensmtpd.table")
_SEPARATORS = " \t:"


class TableFileError(ValueError):
    """A table file smtpd would not load either; the message names file and line."""


def _split(line: str) -> tuple[str, str] | None:
    """(key, value) of a line as parse_table_line() cuts it; None if malformed."""
    if line.startswith("["):
        end = line.find("]")
        if end < 0:
            return None
        cut = end + 1
    else:
        cut = next((i for i, c in enumerate(line) if c in _SEPARATORS), len(line))
    return line[:cut], line[cut + 1:].lstrip(" \t")


def parse_file(path: str | Path) -> dict[str, str | None]:
    """The entries of a table file, keys lower-cased as smtpd loads them."""
    entries: dict[str, str | None] = {}
    kind = ""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                if not kind and line[1:].strip() == "@list":
                    kind = "list"
                continue
            split = _split(line)
            if split is None:  # checked before the kind, as in parse_table_line()
                raise TableFileError(f"{path}:{number}: invalid map entry ('[' without ']')")
            if not kind:
                kind = "mapping" if split[0] != line else "list"
            if kind == "list":
                if split[0] != line:
                    log.warning("%s:%d: a list table: the whole line %r is one key (as smtpd "
                                "reads it)", path, number, line[:80])
                entries[ascii_lower(line)] = None
                continue
            if not split[1]:
                raise TableFileError(f"{path}:{number}: invalid map entry (a mapping table: "
                                     "expected a key, white space or ':', then a value)")
            entries[ascii_lower(split[0])] = split[1]
    return entries


class MappingTable(Table):
    """Serve check/lookup/fetch from a mapping ``{key: value}``, a list of keys, or a file.

    ``MappingTable({"root": "gilles@poolp.org"})``, ``MappingTable(["example.org"])``,
    ``MappingTable(path="/etc/mail/aliases")`` (re-read on ``smtpctl update table``).
    """

    def __init__(self, data: Mapping[str, str | None] | Iterable[str] | None = None, *,
                 path: str | Path | None = None,
                 services: Iterable[Service | str] = ALL_BUT_AUTH, **options: Any) -> None:
        super().__init__(**options)
        if (data is None) == (path is None):
            raise ValueError("give either data or path")
        self.path = Path(path) if path is not None else None
        self.static: StaticEntries[str | None] = StaticEntries()
        self.error: str | None = None  # why the file could not be loaded at start
        if self.path is not None:
            self._first_load()
        else:
            self.load(data)
        # One handler per service, taking the key only: the runtime calls it as fn(key),
        # without building the keyword argument ``request`` (the hot path, bench/).
        chosen = _services(services) or ALL_BUT_AUTH
        for op, handler in ((Op.CHECK, self._checker), (Op.LOOKUP, self._looker)):
            for service in chosen:
                self.on(op, (service,), handler(service))
        self.on(Op.FETCH, chosen, self._fetch)
        self.update(self._reload)

    @property
    def entries(self) -> dict[str, str | None]:
        """The entries as smtpd holds them (keys lower-cased)."""
        return self.static.values

    def load(self, data: Mapping[str, str | None] | Iterable[str] | None = None) -> None:
        if self.path is not None:
            self.static = StaticEntries(parse_file(self.path))
        elif isinstance(data, Mapping):
            self.static = StaticEntries(data)
        elif data is not None:
            self.static = StaticEntries((str(k), None) for k in data)

    def _first_load(self) -> None:
        """A file that cannot be read must not end the process (smtpd exits with its
        tables): every request is answered error, with the reason, until a good file is
        loaded by ``smtpctl update table``."""
        try:
            self.load()
        except (OSError, ValueError) as exc:
            self.error = str(exc)
            log.error("cannot load the table file: %s; answering error until it is fixed "
                      "(smtpctl update table)", self.error)

    def _reload(self) -> None:
        if self.path is not None:
            self.load()
            self.error = None

    def _entries(self) -> StaticEntries[str | None]:
        if self.error is not None:
            raise TempFail(self.error)
        return self.static

    def _checker(self, service: Service) -> Callable[[str], bool]:
        def check(key: str) -> bool:
            return self._entries().check(service, key)
        return check

    def _looker(self, service: Service) -> Callable[[str], str | None]:
        if service in MATCHED:
            def lookup(key: str) -> str | None:
                return self._entries().lookup(service, key)
            return lookup

        def lookup_equal(key: str) -> str | None:
            """_entries() and StaticEntries.lookup() inlined (the hot path: two calls
            fewer): this service finds only the entry equal to the key."""
            if self.error is not None:
                raise TempFail(self.error)
            return self.static.values.get(key.lower() if key.isascii() else ascii_lower(key))
        return lookup_equal

    def _fetch(self) -> str | None:
        return self._entries().fetch()
