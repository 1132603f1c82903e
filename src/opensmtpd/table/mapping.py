"""A ready-made backend over a mapping, a list or a file in smtpd's ``file:`` format.

File format (table(5), table_static.c): one entry per line, ``#`` comments; a key, then
white space or ``:`` , then the value (a mapping table) — or keys alone (a list table).
Mixing both is an error, reported with the file and line. Keys are lower-cased, as smtpd
does for its own static tables; CHECK uses smtpd's matching (wildcards, CIDR, mailaddr).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .backend import Table
from .events import Op, Request
from .match import matches
from .services import ALL_BUT_AUTH, Service

_SEPARATOR = re.compile(r"[ \t:]")


class TableFileError(ValueError):
    """A table file smtpd would not load either; the message names file and line."""


def parse_file(path: str | Path) -> dict[str, str | None]:
    entries: dict[str, str | None] = {}
    kind = ""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _SEPARATOR.search(line)
            key = line[: match.start()] if match else line
            value = line[match.end():].lstrip(" \t:").strip() if match else ""
            this = "mapping" if value else "list"
            kind = kind or this
            if this != kind:
                raise TableFileError(f"{path}:{number}: {this} entry {key!r} in a {kind} table "
                                     "(every line must have a value, or none must)")
            entries[key.lower()] = value or None
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
        self.entries: dict[str, str | None] = {}
        self._cursor = itertools.count()
        self.load(data)
        services = tuple(services)
        self.on(Op.CHECK, services, self._check)
        self.on(Op.LOOKUP, services, self._lookup)
        self.on(Op.FETCH, services, self._fetch)
        self.update(self._reload)

    def load(self, data: Mapping[str, str | None] | Iterable[str] | None = None) -> None:
        if self.path is not None:
            self.entries = parse_file(self.path)
        elif isinstance(data, Mapping):
            self.entries = {str(k).lower(): v for k, v in data.items()}
        elif data is not None:
            self.entries = dict.fromkeys((str(k).lower() for k in data), None)

    def _reload(self) -> None:
        if self.path is not None:
            self.load()

    def _check(self, key: str, request: Request) -> bool:
        assert request.service is not None
        if key in self.entries:
            return True
        return matches(request.service, key, self.entries)

    def _lookup(self, key: str) -> str | None:  # no ``request``: the cheaper call
        return self.entries.get(key)

    def _fetch(self, request: Request) -> str | None:
        keys = list(self.entries)
        if not keys:
            return None
        return keys[next(self._cursor) % len(keys)]
