"""Key layout: where a table's entries live in the key/value store.

A template with the placeholders ``<table>``, ``<service>`` and ``<key>``; the default
is the seed's ``<table>/<service>/<key>`` (``aliases/alias/root`` holds root's alias in
table ``aliases``). Without ``<service>`` a key serves every service (``domains/<key>``);
without ``<table>`` tables share keys (``mail/<service>/<key>``).

The watched prefix is the template up to its first ``<service>`` or ``<key>``, with the
table name filled in: one watcher per table reads exactly that prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..table import Service

DEFAULT_LAYOUT = "<table>/<service>/<key>"
_PLACEHOLDER = re.compile(r"<([a-z]+)>")
_KNOWN = ("table", "service", "key")


class LayoutError(ValueError):
    """A key layout that cannot work; the message says why."""


@dataclass(frozen=True)
class Layout:
    template: str

    def __post_init__(self) -> None:
        names = _PLACEHOLDER.findall(self.template)
        unknown = [n for n in names if n not in _KNOWN]
        if unknown:
            raise LayoutError(f"unknown placeholder <{unknown[0]}> (known: <table>, <service>, "
                              "<key>)")
        for name in _KNOWN:
            if names.count(name) > 1:
                raise LayoutError(f"<{name}> appears more than once")
        if not self.template.endswith("<key>"):
            raise LayoutError("the layout must end with <key>")
        if "table" in names and names.index("table") > min(
                names.index(n) for n in ("service", "key") if n in names):
            raise LayoutError("<table> must come before <service> and <key>")
        if "service" in names and self.template.index("<service>") + len("<service>") == \
                self.template.index("<key>"):
            raise LayoutError("<service> and <key> need a separator between them")
        if self.template.startswith("/"):
            raise LayoutError("Consul keys do not start with '/'")

    @property
    def has_table(self) -> bool:
        return "<table>" in self.template

    @property
    def has_service(self) -> bool:
        return "<service>" in self.template

    def prefix(self, table: str) -> str:
        """The key prefix one watcher reads for ``table``."""
        cut = min(self.template.index(p) for p in ("<service>", "<key>")
                  if p in self.template)
        return self.template[:cut].replace("<table>", table)

    def key(self, table: str, service: Service | str | None, key: str) -> str:
        """The store key of ``key`` for ``service`` in ``table``."""
        text = self.template.replace("<table>", table)
        if self.has_service:
            if service is None:
                raise LayoutError("this layout needs a service")
            text = text.replace("<service>", str(service))
        return text.replace("<key>", key)

    def parser(self, table: str) -> KeyParser:
        return KeyParser(self, table)


class KeyParser:
    """Splits the store keys under a table's prefix into (service, key)."""

    def __init__(self, layout: Layout, table: str) -> None:
        self.prefix = layout.prefix(table)
        rest = layout.template.replace("<table>", table)[len(self.prefix):]
        pattern = "".join(
            {"<service>": r"(?P<service>[a-z]+)", "<key>": r"(?P<key>.+)"}.get(part)
            or re.escape(part)
            for part in re.split(r"(<service>|<key>)", rest) if part)
        self._regex = re.compile(pattern, re.DOTALL)

    def parse(self, store_key: str) -> tuple[Service | None, str] | None:
        """(service or None for every service, key); None if the key is not an entry."""
        if not store_key.startswith(self.prefix):
            return None
        match = self._regex.fullmatch(store_key, len(self.prefix))
        if match is None:
            return None
        key = match.group("key")
        if key.endswith("/"):  # a "folder" placeholder, as the Consul UI creates
            return None
        groups = match.groupdict()
        if "service" not in groups:
            return None, key
        service = Service.from_name(groups["service"])
        if service is None:
            return None
        return service, key
