"""table-consul: OpenSMTPD tables served from Consul KV, or from an embedded SQLite store.

A live replica per table (blocking queries, in-memory copy) answers every lookup from
memory with smtpd's own table semantics; an outage never bounces mail (error, never
not-found). See docs/table-consul.md.
"""

from .config import Config, ConfigError, load
from .layout import DEFAULT_LAYOUT, Layout, LayoutError

__all__ = ["DEFAULT_LAYOUT", "Config", "ConfigError", "Layout", "LayoutError", "load"]
