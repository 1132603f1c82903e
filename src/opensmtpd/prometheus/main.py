"""filter-prometheus: export smtp-in and smtp-out activity of OpenSMTPD to Prometheus.

    filter "prometheus" proc-exec "filter-prometheus -exporter 127.0.0.1:13742"
    listen on 0.0.0.0 filter "prometheus"
    action "out" relay filter "prometheus"

Built on the public opensmtpd.filter API. It never exits on its own while smtpd runs
(smtpd would exit too): bad arguments are logged and replaced by the defaults, and
without prometheus_client (the ``prometheus`` extra) it says so in one line and lets
mail through unobserved.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from opensmtpd import __version__
from opensmtpd.extras import MissingExtra, require, self_test
from opensmtpd.filter import Filter
from opensmtpd.stdio import setup_logging

from .exporter import DEFAULT_ADDRESS, Exporter, parse_address
from .limits import IDLE_TIMEOUT as HTTP_TIMEOUT
from .limits import MAX_CONNECTIONS as HTTP_MAX_CONNECTIONS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .metrics import SmtpdMetrics

log = logging.getLogger("opensmtpd.prometheus")
DEFAULT_MAX_SESSIONS = 100_000


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="filter-prometheus", description="OpenSMTPD filter exporting metrics to "
        "Prometheus (run by smtpd: filter NAME proc-exec \"filter-prometheus …\").")
    p.add_argument("-exporter", "--exporter", default=DEFAULT_ADDRESS, metavar="HOST:PORT",
                   help=f"where to serve /metrics (default {DEFAULT_ADDRESS})")
    p.add_argument("-max-sessions", "--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS,
                   metavar="N", help="sessions tracked at most; the oldest is dropped past "
                   f"it (default {DEFAULT_MAX_SESSIONS})")
    p.add_argument("-table-metrics", "--table-metrics", metavar="DIR",
                   help="also serve the table metrics every table process writes to DIR "
                        "(their OPENSMTPD_METRICS_DIR; docs/monitoring.md)")
    p.add_argument("-http-timeout", "--http-timeout", type=float, default=HTTP_TIMEOUT,
                   metavar="SECONDS", help="how long /metrics waits for a client's read or "
                   "write; a connection ends after 3 times this in all (default "
                   f"{HTTP_TIMEOUT:.0f})")
    p.add_argument("-http-max-connections", "--http-max-connections", type=int,
                   default=HTTP_MAX_CONNECTIONS, metavar="N", help="connections to /metrics "
                   f"served at once, the others closed (default {HTTP_MAX_CONNECTIONS})")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def options(argv: list[str]) -> argparse.Namespace:
    """The options; what is wrong is logged and defaulted (exiting would stop smtpd)."""
    p = parser()
    try:
        args, unknown = p.parse_known_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):  # --help, --version: a human at a terminal
            raise
        log.error("invalid arguments %s: using the defaults", argv)
        args, unknown = p.parse_known_args([])
    if unknown:
        log.error("ignoring unknown arguments: %s", " ".join(unknown))
    try:
        args.address = parse_address(args.exporter)
    except ValueError as exc:
        log.error("-exporter: %s; using %s", exc, DEFAULT_ADDRESS)
        args.address = parse_address(DEFAULT_ADDRESS)
    if args.max_sessions < 1:
        log.error("-max-sessions must be at least 1; using %d", DEFAULT_MAX_SESSIONS)
        args.max_sessions = DEFAULT_MAX_SESSIONS
    if not 0 < args.http_timeout <= 3600:
        log.error("-http-timeout must be in (0, 3600] seconds; using %.0f", HTTP_TIMEOUT)
        args.http_timeout = HTTP_TIMEOUT
    if not 0 < args.http_max_connections <= 1024:
        log.error("-http-max-connections must be in [1, 1024]; using %d",
                  HTTP_MAX_CONNECTIONS)
        args.http_max_connections = HTTP_MAX_CONNECTIONS
    if args.table_metrics is not None and not os.path.isabs(args.table_metrics):
        log.error("-table-metrics needs an absolute path, not %r: no table metrics",
                  args.table_metrics)
        args.table_metrics = None
    return args


def build(max_sessions: int = DEFAULT_MAX_SESSIONS, table_metrics: str | None = None,
          ) -> tuple[Filter, SmtpdMetrics, CollectorRegistry]:
    from prometheus_client import CollectorRegistry, ProcessCollector

    from opensmtpd.table.metrics import Collector

    from .metrics import SmtpdMetrics

    f = Filter("prometheus", max_sessions=max_sessions)
    metrics = SmtpdMetrics()
    metrics.attach(f)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.collector)
    ProcessCollector(registry=registry)
    if table_metrics is not None:  # every table process's series, summed at each scrape
        registry.register(Collector(table_metrics))
    return f, metrics, registry


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == ["--self-test"]:
        return self_test("filter-prometheus", needs=("prometheus_client",))
    setup_logging("filter prometheus")
    args = options(words)
    try:
        require("prometheus_client")
    except MissingExtra as exc:
        if sys.stdin.isatty():  # a human: the one line is enough
            print(f"filter-prometheus: {exc}", file=sys.stderr)
            return 1
        log.error("%s; no metrics: mail passes through unobserved", exc)
        Filter("prometheus").run()  # smtpd exits if a filter does: serve it, registering nothing
        return 0
    f, _, registry = build(args.max_sessions, args.table_metrics)
    host, port = args.address
    Exporter(host, port, registry, timeout=args.http_timeout,
             max_connections=args.http_max_connections).start()
    f.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
