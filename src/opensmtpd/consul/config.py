"""The table-consul configuration file, and Consul's standard environment variables.

Format: one ``key = value`` per line; ``#`` starts a comment line (a `` #`` after an
unquoted value is refused, not read as part of it); blank lines are ignored; a value may
be wrapped in double quotes. Every key is optional (see KEYS for the
defaults and docs/table-consul.md). Precedence: the file, then the environment
(``CONSUL_HTTP_ADDR``…), then the default. A wrong key or value raises ConfigError naming
the file, the line and the key.

The ACL token is never a config key: it comes from ``token_file`` (or
``CONSUL_HTTP_TOKEN_FILE``) or from ``CONSUL_HTTP_TOKEN``, is sent only in the
``X-Consul-Token`` header, and never appears in a repr, a log line or argv.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..table import Service
from ..table.wire.services import ALL_BUT_AUTH
from .layout import DEFAULT_LAYOUT, Layout, LayoutError

DEFAULT_DATABASE = "/var/lib/table-consul/kv.sqlite3"
DEFAULT_ADDRESS = "127.0.0.1:8500"
CONSISTENCY_MODES = ("default", "stale", "consistent")
STORES = ("embedded", "consul")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names file, line and key."""


# --- value parsers: text -> value, ValueError with a short "expected ..." message ---

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError("expected a duration such as 500ms, 30s, 5m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("expected a duration greater than zero")
    return value


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return text
    return parse


def _absolute_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("expected an absolute path (smtpd runs tables from /)")
    return text


def _optional_path(text: str) -> str | None:
    return _absolute_path(text) if text else None


def _datacenter(text: str) -> str | None:
    if text and not re.fullmatch(r"[A-Za-z0-9_.-]+", text):
        raise ValueError("expected a datacenter name (letters, digits, '-', '_', '.')")
    return text or None


def _table_name(text: str) -> str | None:
    if text and not re.fullmatch(r"[A-Za-z0-9_.@+-]+", text):
        raise ValueError("expected a table name (letters, digits and _ . @ + -)")
    return text or None


def _layout(text: str) -> Layout:
    try:
        return Layout(text)
    except LayoutError as exc:
        raise ValueError(str(exc)) from None


def _services(text: str) -> tuple[Service, ...]:
    result = []
    for name in (part.strip() for part in text.split(",")):
        service = Service.from_name(name.lower())
        if service is None:
            raise ValueError(f"unknown service {name!r} (known: "
                             f"{', '.join(s.value for s in ALL_BUT_AUTH)})")
        if service is Service.AUTH:
            raise ValueError("auth is not served (it would need cleartext password checks): "
                             "use a credentials table")
        result.append(service)
    if not result:
        raise ValueError("expected at least one service")
    return tuple(dict.fromkeys(result))


def normalize_address(text: str, ssl: bool) -> str:
    """``host[:port]``, ``http(s)://host[:port]`` or ``unix:///path`` -> a full URL."""
    text = text.strip()
    if text.startswith("unix://"):
        if not text[len("unix://"):].startswith("/"):
            raise ValueError("expected unix:///absolute/path")
        return text
    scheme = "https" if ssl else "http"
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in ("http", "https"):
            raise ValueError("expected an http://, https:// or unix:// address")
    host = text.rstrip("/")
    if not host or "/" in host or "@" in host or "?" in host:
        raise ValueError("expected host:port (no path, no credentials)")
    if not re.search(r":\d+$", host) or host.endswith("]"):
        host += ":8500"
    return f"{scheme}://{host}"


@dataclass(frozen=True)
class Key:
    """How a configuration key is read: its parser, the Consul environment variable that
    stands in for it, and what it is for."""

    parse: Callable[[str], Any]
    env: str | None = None
    doc: str = ""


def setting(default: Any, parse: Callable[[str], Any], env: str | None = None,
            doc: str = "") -> Any:
    """One configuration key, declared once: a Config field with its default and Key."""
    metadata = {"key": Key(parse, env, doc)}
    if isinstance(default, Layout):
        return field(default_factory=lambda: Layout(default.template), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """The effective settings; every key of the file is a field declared with setting()."""

    store: str = setting("embedded", _choice(*STORES), doc="embedded (SQLite file) or consul")
    database: str = setting(DEFAULT_DATABASE, _absolute_path, doc="the embedded store's file")
    poll_interval: float = setting(0.2, _positive_duration,
                                   doc="embedded store: how often to look for changes")
    address: str = setting(DEFAULT_ADDRESS, str, "CONSUL_HTTP_ADDR",
                           "Consul HTTP API: host:port, http(s)://host:port or unix:///path")
    ssl: bool = setting(False, parse_bool, "CONSUL_HTTP_SSL", "https when address has no "
                        "scheme")
    ssl_verify: bool = setting(True, parse_bool, "CONSUL_HTTP_SSL_VERIFY",
                               "verify the server certificate")
    ca_file: str | None = setting(None, _optional_path, "CONSUL_CACERT", "CA bundle (PEM)")
    ca_path: str | None = setting(None, _optional_path, "CONSUL_CAPATH",
                                  "directory of CA certificates")
    client_cert: str | None = setting(None, _optional_path, "CONSUL_CLIENT_CERT",
                                      "client certificate (PEM)")
    client_key: str | None = setting(None, _optional_path, "CONSUL_CLIENT_KEY",
                                     "client key (PEM)")
    token_file: str | None = setting(None, _optional_path, "CONSUL_HTTP_TOKEN_FILE",
                                     "file holding the ACL token (else CONSUL_HTTP_TOKEN)")
    table: str | None = setting(None, _table_name, doc="the table's name (default: the one "
                                "smtpd sends; the 2020 dialect sends none)")
    datacenter: str | None = setting(None, _datacenter,
                                     doc="datacenter to read (default: the agent's)")
    consistency: str = setting("stale", _choice(*CONSISTENCY_MODES),
                               doc="read consistency: stale keeps working without a leader")
    key_layout: Layout = setting(Layout(DEFAULT_LAYOUT), _layout,
                                 doc="where entries live: <table>, <service>, <key>")
    services: tuple[Service, ...] = setting(ALL_BUT_AUTH, _services,
                                            doc="services registered with smtpd")
    allow_empty: bool = setting(False, parse_bool, doc="an empty table answers not-found "
                                "(else error: an ACL token without read access also yields "
                                "an empty list)")
    wait: float = setting(60.0, _positive_duration, doc="blocking query wait")
    timeout: float = setting(5.0, _positive_duration,
                             doc="connect timeout and non-blocking reads")
    retry_min: float = setting(0.5, _positive_duration,
                               doc="first back-off after a sync error")
    retry_max: float = setting(30.0, _positive_duration, doc="longest back-off")
    max_staleness: float = setting(300.0, _positive_duration,
                                   doc="serve the last good copy this long after the last sync")
    startup_wait: float = setting(4.0, parse_duration,
                                  doc="how long the first request waits for the first sync")
    deadline: float = setting(5.0, _positive_duration, doc="per-request deadline")
    # not keys of the file:
    path: str | None = None
    env_token: str | None = field(default=None, repr=False)  # CONSUL_HTTP_TOKEN
    origin: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def token(self) -> str | None:
        """The ACL token, read now (a token file may be rotated): file first, then env."""
        if self.token_file is not None:
            try:
                text = Path(self.token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{self.origin.get('token_file', 'token_file')}: cannot "
                                  f"read the token file {self.token_file}: "
                                  f"{exc.strerror or exc} (expected a file holding the ACL "
                                  "token, readable by smtpd's user)") from None
            if not text:
                raise ConfigError(f"{self.origin.get('token_file', 'token_file')}: the token "
                                  f"file {self.token_file} is empty")
            return text
        return self.env_token or None

    def describe(self) -> str:
        """The effective settings, one per line, for humans (never the token)."""
        lines = []
        for name in KEYS:
            value = getattr(self, name)
            if isinstance(value, Layout):
                value = value.template
            elif isinstance(value, tuple):
                value = ", ".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            elif value is None:
                value = ""
            origin = self.origin.get(name, "default")
            lines.append(f"{name} = {value}    # {origin}")
        token = ("token_file" if self.token_file else
                 "CONSUL_HTTP_TOKEN" if self.env_token else "none")
        lines.append(f"# ACL token from: {token}")
        return "\n".join(lines)


KEYS: dict[str, Key] = {f.name: f.metadata["key"] for f in fields(Config) if "key" in f.metadata}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def parse_lines(text: str, where: str) -> dict[str, tuple[int, str]]:
    """``key = value`` lines -> {key: (line number, raw value)}."""
    found: dict[str, tuple[int, str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigError(f"{where}:{number}: expected 'key = value', got {line[:60]!r}")
        if key not in KEYS:
            if key.lower() == "token":
                hint = " (tokens never go in this file: use token_file)"
            else:
                close = difflib.get_close_matches(key, KEYS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{where}:{number}: unknown key {key!r}{hint}")
        if key in found:
            raise ConfigError(f"{where}:{number}: key {key!r} already set on line "
                              f"{found[key][0]}")
        value = value.strip()
        if not value.startswith('"') and re.search(r"\s#", value):
            raise ConfigError(f"{where}:{number}: {key}: a comment must be on its own line "
                              f"(expected only the value; quote a value holding ' #'), got "
                              f"{value[:60]!r}")
        found[key] = (number, _unquote(value))
    return found


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (None: defaults only) and the environment."""
    env = os.environ if env is None else env
    where = str(path) if path is not None else "<defaults>"
    entries: dict[str, tuple[int, str]] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"{where}: cannot read the configuration: {reason}") from None
        entries = parse_lines(text, where)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    defaults = Config()
    for name, spec in KEYS.items():
        variable = spec.env
        if name in entries:
            number, raw = entries[name]
            label = f"{where}:{number}: {name}"
        elif variable and env.get(variable, "") != "":
            raw = env[variable]
            label = f"environment {variable}"
        else:
            values[name] = getattr(defaults, name)
            continue
        try:
            values[name] = spec.parse(raw)
        except ValueError as exc:
            shown = "<hidden>" if name == "token_file" else repr(raw[:80])
            raise ConfigError(f"{label}: invalid value {shown}: {exc}") from None
        origin[name] = label
    try:
        values["address"] = normalize_address(values["address"], values["ssl"])
    except ValueError as exc:
        label = origin.get("address", "address")
        raise ConfigError(f"{label}: invalid value {values['address'][:80]!r}: {exc}") from None
    _check_together(values, origin, where)
    config = Config(path=str(path) if path is not None else None,
                    env_token=env.get("CONSUL_HTTP_TOKEN") or None, origin=origin, **values)
    if config.store == "consul":
        config.token()  # a missing or empty token file is a configuration error
    return config


def _check_together(values: dict[str, Any], origin: dict[str, str], where: str) -> None:
    def fail(name: str, message: str) -> None:
        raise ConfigError(f"{origin.get(name, f'{where}: {name} (default)')}: {message}")

    if values["retry_max"] < values["retry_min"]:
        fail("retry_max", f"must be at least retry_min ({values['retry_min']:g}s)")
    idle = values["wait"] * 17 / 16 + values["timeout"]  # Consul adds up to wait/16 of jitter
    if values["max_staleness"] <= idle:
        fail("max_staleness", f"must exceed wait * 17/16 + timeout ({idle:g}s): an idle "
             "blocking query answers only once per wait")
    if (values["client_cert"] is None) != (values["client_key"] is None):
        fail("client_cert" if values["client_cert"] else "client_key",
             "client_cert and client_key go together")
    if values["wait"] > 600:
        fail("wait", "Consul caps blocking queries at 10m")
