"""table-consul's table: smtpd's requests answered from the live replica.

Built on the public table API only (``opensmtpd.table.Table``), so it serves smtpd 6.8
(imsg) and 7.6+ (line protocol) alike. The table name arrives with smtpd's handshake
(imsg OPEN / ``config|tablename``; argv[0] is lost to the interpreter), so the watcher of
a layout with ``<table>`` starts on the first request, which waits up to
``startup_wait`` for the first sync; a layout without ``<table>`` starts at once.

A configuration that cannot be used never makes the process exit (an exiting table takes
smtpd 6.8 down): every request is answered ``error`` with the reason, which is logged.
"""

from __future__ import annotations

import logging
import threading

from ..extras import MissingExtra, require
from ..table import Op, Request, Service, Table, TempFail
from ..table.wire.events import Hello
from ..table.wire.services import ALL_BUT_AUTH
from .config import Config, ConfigError
from .replica import Replica, Snapshot, Source
from .store import EmbeddedSource
from .watcher import Watcher

log = logging.getLogger("opensmtpd.consul")

MAX_PREFIXES = 16  # one process serves one smtpd table: a handful of prefixes at most


def make_source(config: Config) -> Source:
    if config.store == "consul":
        require("httpx")  # needed for Consul only: MissingExtra says how to get it
        from .client import ConsulClient

        return ConsulClient(config)
    return EmbeddedSource(config.database, config.poll_interval)


class ConsulTable(Table):
    """A table served from Consul KV (or the embedded store) through a live replica."""

    def __init__(self, config: Config, *, source: Source | None = None) -> None:
        super().__init__(deadline=config.deadline, unregistered="error")
        self.config = config
        self.source = source if source is not None else make_source(config)
        self._watchers: dict[str, Watcher] = {}
        self._lock = threading.Lock()
        for op, handler in ((Op.CHECK, self._check), (Op.LOOKUP, self._lookup),
                            (Op.FETCH, self._fetch)):
            self.on(op, config.services, handler)
        self.update(self._resync)
        if config.table or not config.key_layout.has_table:
            self._watcher(config.table or "")  # the prefix is known before any request

    def _watcher(self, table: str) -> Watcher:
        layout = self.config.key_layout
        prefix = layout.prefix(table)
        watcher = self._watchers.get(prefix)
        if watcher is not None:
            return watcher
        with self._lock:
            watcher = self._watchers.get(prefix)
            if watcher is None:
                if len(self._watchers) >= MAX_PREFIXES:
                    raise TempFail(f"more than {MAX_PREFIXES} table prefixes in one process")
                replica = Replica(prefix, layout.parser(table), self.config.max_staleness,
                                  self.config.allow_empty)
                replica.measured(self.metrics)
                watcher = Watcher(replica, self.source, wait=self.config.wait,
                                  retry_min=self.config.retry_min,
                                  retry_max=self.config.retry_max)
                log.info("watching %r in the %s store", prefix, self.config.store)
                watcher.start()
                self._watchers[prefix] = watcher
        return watcher

    def handshake(self, protocol: str, hello: Hello | None) -> None:
        super().handshake(protocol, hello)
        with self._lock:  # replicas started before the metrics were set up report too
            for watcher in self._watchers.values():
                watcher.replica.measured(self.metrics)

    def _table_name(self, request: Request) -> str:
        name = self.config.table or request.table
        if not name and self.config.key_layout.has_table:
            raise TempFail("smtpd sent no table name (the unnamed 2020 form has none): "
                           "set table = NAME in the config")
        return name

    def snapshot(self, request: Request) -> Snapshot:
        watcher = self._watcher(self._table_name(request))
        if not watcher.first_attempt.is_set():
            watcher.first_attempt.wait(min(self.config.startup_wait, self.deadline * 0.8))
        return watcher.replica.current()

    def _check(self, key: str, request: Request) -> bool:
        assert request.service is not None
        return self.snapshot(request).check(request.service, key)

    def _lookup(self, key: str, request: Request) -> str | None:
        assert request.service is not None
        return self.snapshot(request).lookup(request.service, key)

    def _fetch(self, request: Request) -> list[str] | None:
        assert request.service is not None
        return self.snapshot(request).fetch(request.service) or None

    def _resync(self, request: Request) -> None:
        """``smtpctl update table NAME``: re-read the token and the whole prefix now."""
        reload = getattr(self.source, "refresh_token", None)
        try:
            if reload is not None:
                reload()
            self._watcher(self._table_name(request)).resync()
        except TempFail:
            raise
        except Exception as exc:
            raise TempFail(f"re-sync failed: {exc}") from None

    def close(self) -> None:
        for watcher in list(self._watchers.values()):
            watcher.stop()
        self.source.close()


class BrokenTable(Table):
    """Answers every request ``error`` with the reason (a configuration that cannot work).

    The reason is logged once smtpd has named the table (its handshake), so the line is
    labelled ``table NAME`` like every other line of the table, and again with each
    request's error."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(unregistered="error")
        self.reason = reason
        self.detail = detail or reason
        self._told = False
        services: tuple[Service, ...] = ALL_BUT_AUTH
        for op in (Op.CHECK, Op.LOOKUP, Op.FETCH):
            self.on(op, services, self._fail)
        self.update(self._fail)

    def handshake(self, protocol: str, hello: Hello | None) -> None:
        super().handshake(protocol, hello)
        if hello is not None:
            self._tell()

    def _tell(self) -> None:
        if not self._told:
            self._told = True
            log.error("%s; answering every request with error", self.detail)

    def _fail(self, *args: object, **kwargs: object) -> None:
        self._tell()  # the unnamed 2020 dialect has no handshake
        raise TempFail(self.reason)


def build_table(config_path: str | None) -> Table:
    """The table for ``config_path``: a ConsulTable, or a BrokenTable saying what is wrong."""
    from .config import load

    try:
        config = load(config_path)
        return ConsulTable(config)
    except ConfigError as exc:
        return BrokenTable(f"configuration error: {exc}")
    except MissingExtra as exc:
        return BrokenTable("cannot start: httpx missing", f"cannot start: {exc}")
    except Exception as exc:  # exiting would take smtpd 6.8 down
        return BrokenTable(f"cannot start: {type(exc).__name__}",
                           f"cannot start ({type(exc).__name__}: {exc})")
