"""The config file: every key with its default, Consul's environment, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from opensmtpd.consul.config import KEYS, Config, ConfigError, load, parse_duration
from opensmtpd.table import Service
from opensmtpd.table.wire.services import ALL_BUT_AUTH

SECRET = "5e1b3c2a-0000-4000-8000-00000000beef"


def write(tmp_path: Path, text: str, name: str = "table-consul.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    config = load(None, env={})
    assert config.store == "embedded"
    assert config.database == "/var/lib/table-consul/kv.sqlite3"
    assert config.address == "http://127.0.0.1:8500"
    assert config.consistency == "stale"
    assert config.key_layout.template == "<table>/<service>/<key>"
    assert config.services == ALL_BUT_AUTH and Service.AUTH not in config.services
    assert (config.wait, config.timeout, config.max_staleness) == (60.0, 5.0, 300.0)
    assert (config.retry_min, config.retry_max, config.deadline) == (0.5, 30.0, 5.0)
    assert config.startup_wait == 4.0 and config.poll_interval == 0.2
    assert config.allow_empty is False and config.ssl is False and config.ssl_verify is True
    assert config.datacenter is None and config.token() is None


def test_every_key_is_documented_with_a_default_and_a_field() -> None:
    fields = set(Config.__dataclass_fields__)
    for name, key in KEYS.items():
        assert name in fields, name
        assert key.doc, name
    docs = (Path(__file__).resolve().parents[3] / "docs" / "table-consul.md").read_text()
    for name in KEYS:
        assert f"`{name}`" in docs, f"{name} missing from docs/table-consul.md"


def test_file_sets_every_kind_of_value(tmp_path: Path) -> None:
    path = write(tmp_path, """
# comment
store = consul
address = "https://consul.test:8501"
datacenter = dc-2
consistency = consistent
key_layout = mail/<service>/<key>
services = alias, domain
allow_empty = yes
wait = 500ms
timeout = 2s
retry_min = 100ms
retry_max = 1m
max_staleness = 1h
startup_wait = 0
deadline = 3s
poll_interval = 50ms
database = /srv/kv.db
ssl_verify = off
""")
    config = load(path, env={})
    assert config.store == "consul" and config.address == "https://consul.test:8501"
    assert config.datacenter == "dc-2" and config.consistency == "consistent"
    assert config.key_layout.prefix("any") == "mail/"
    assert config.services == (Service.ALIAS, Service.DOMAIN)
    assert config.allow_empty is True and config.ssl_verify is False
    assert (config.wait, config.timeout, config.retry_min, config.retry_max) == (
        0.5, 2.0, 0.1, 60.0)
    assert (config.max_staleness, config.startup_wait, config.deadline) == (3600.0, 0.0, 3.0)
    assert config.poll_interval == 0.05 and config.database == "/srv/kv.db"
    assert config.origin["wait"] == f"{path}:10: wait"


@pytest.mark.parametrize(("text", "line", "needle"), [
    ("store = consul\nadress = 127.0.0.1:8500\n", 2,
     "unknown key 'adress' (did you mean address?)"),
    ("token = abc\n", 1, "unknown key 'token' (tokens never go in this file: use token_file)"),
    ("\n\nwait = soon\n", 3, "wait: invalid value 'soon': expected a duration"),
    ("consistency = eventual\n", 1, "consistency: invalid value 'eventual': expected one of"),
    ("store = etcd\n", 1, "store: invalid value 'etcd'"),
    ("allow_empty = maybe\n", 1, "allow_empty: invalid value 'maybe': expected true or false"),
    ("services = alias, nope\n", 1, "services: invalid value 'alias, nope': unknown service"),
    ("services = auth\n", 1, "auth is not served"),
    ("key_layout = <table>/<service>\n", 1, "key_layout: invalid value"),
    ("key_layout = <key>/<table>\n", 1, "must end with <key>"),
    ("key_layout = <service>/<table>/<key>\n", 1, "<table> must come before"),
    ("key_layout = <table>/<servise>/<key>\n", 1, "unknown placeholder <servise>"),
    ("database = relative.db\n", 1, "database: invalid value 'relative.db': expected an absolute"),
    ("wait = 0s\n", 1, "greater than zero"),
    ("address = ftp://x\n", 1, "address: invalid value"),
    ("datacenter = dc 1\n", 1, "datacenter: invalid value"),
    ("just words\n", 1, "expected 'key = value'"),
    ("wait = 1s\nwait = 2s\n", 2, "key 'wait' already set on line 1"),
    # docs/table-consul.md once showed this line: the comment was read as part of the path
    ("store = consul\ntoken_file = /etc/mail/consul-token      # root:opensmtpd 0640\n", 2,
     "token_file: a comment must be on its own line (expected only the value"),
    ("wait = 5s # five seconds\n", 1, "wait: a comment must be on its own line"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int,
                                       needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert needle in message, message


@pytest.mark.parametrize(("text", "where", "needle"), [
    ("wait = 60s\nmax_staleness = 30s\n", ":2: max_staleness", "must exceed wait * 17/16"),
    ("wait = 5m\n", ".conf: max_staleness (default)", "must exceed wait * 17/16"),
    ("retry_min = 10s\nretry_max = 1s\n", ":2: retry_max", "must be at least retry_min"),
    ("client_cert = /etc/cert.pem\n", ":1: client_cert", "client_cert and client_key go"),
    ("wait = 11m\nmax_staleness = 1h\n", ":1: wait", "Consul caps blocking queries at 10m"),
])
def test_inconsistent_settings_are_errors(tmp_path: Path, text: str, where: str,
                                          needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    message = str(caught.value)
    assert where in message and needle in message, message


def test_a_quoted_value_may_hold_a_hash(tmp_path: Path) -> None:
    path = write(tmp_path, 'database = "/srv/kv #1.db"\n')
    assert load(path, env={}).database == "/srv/kv #1.db"


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.conf: cannot read the configuration"):
        load(tmp_path / "nope.conf", env={})


def test_consul_environment_variables() -> None:
    env = {"CONSUL_HTTP_ADDR": "10.1.2.3", "CONSUL_HTTP_SSL": "true",
           "CONSUL_HTTP_SSL_VERIFY": "false", "CONSUL_CACERT": "/etc/ca.pem",
           "CONSUL_CAPATH": "/etc/cas", "CONSUL_CLIENT_CERT": "/etc/c.pem",
           "CONSUL_CLIENT_KEY": "/etc/k.pem", "CONSUL_HTTP_TOKEN": SECRET}
    config = load(None, env=env)
    assert config.address == "https://10.1.2.3:8500"
    assert config.ssl and not config.ssl_verify
    assert (config.ca_file, config.ca_path) == ("/etc/ca.pem", "/etc/cas")
    assert (config.client_cert, config.client_key) == ("/etc/c.pem", "/etc/k.pem")
    assert config.token() == SECRET
    assert config.origin["address"] == "environment CONSUL_HTTP_ADDR"


@pytest.mark.parametrize(("address", "ssl", "expected"), [
    ("127.0.0.1:8500", False, "http://127.0.0.1:8500"),
    ("consul.test", False, "http://consul.test:8500"),
    ("consul.test:443", True, "https://consul.test:443"),
    ("http://consul.test:80", True, "http://consul.test:80"),  # an explicit scheme wins
    ("[::1]:8500", False, "http://[::1]:8500"),
    ("[::1]", False, "http://[::1]:8500"),
    ("unix:///run/consul/http.sock", False, "unix:///run/consul/http.sock"),
])
def test_address_forms(address: str, ssl: bool, expected: str) -> None:
    env = {"CONSUL_HTTP_ADDR": address, "CONSUL_HTTP_SSL": "1" if ssl else "0"}
    assert load(None, env=env).address == expected


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment CONSUL_HTTP_SSL: invalid value 'sure'"):
        load(None, env={"CONSUL_HTTP_SSL": "sure"})


def test_file_wins_over_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "address = 127.0.0.1:9500\n")
    config = load(path, env={"CONSUL_HTTP_ADDR": "127.0.0.1:7500"})
    assert config.address == "http://127.0.0.1:9500"


def test_token_file_wins_over_token_and_is_reread(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{SECRET}\n")
    path = write(tmp_path, f"store = consul\ntoken_file = {token_file}\n")
    config = load(path, env={"CONSUL_HTTP_TOKEN": "from-env"})
    assert config.token() == SECRET
    token_file.write_text("rotated\n")
    assert config.token() == "rotated"
    env_file = tmp_path / "env-token"
    env_file.write_text("from-env-file")
    config = load(None, env={"CONSUL_HTTP_TOKEN_FILE": str(env_file),
                             "CONSUL_HTTP_TOKEN": "from-env"})
    assert config.token() == "from-env-file"


def test_unreadable_or_empty_token_file_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, f"store = consul\ntoken_file = {tmp_path}/missing\n")
    with pytest.raises(ConfigError, match=r":2: token_file: cannot read the token file"
                       r".*No such file.*expected a file holding the ACL token"):
        load(path, env={})
    (tmp_path / "empty").write_text("\n")
    path = write(tmp_path, f"store = consul\ntoken_file = {tmp_path}/empty\n")
    with pytest.raises(ConfigError, match="is empty"):
        load(path, env={})


def test_token_never_in_repr_or_description(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET)
    config = load(None, env={"CONSUL_HTTP_TOKEN": SECRET})
    assert SECRET not in repr(config) and SECRET not in config.describe()
    assert "ACL token from: CONSUL_HTTP_TOKEN" in config.describe()
    config = load(write(tmp_path, f"token_file = {token_file}\n"), env={})
    assert SECRET not in repr(config) and SECRET not in config.describe()
    described = config.describe()
    for name in KEYS:
        assert f"\n{name} = " in "\n" + described, name


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("7", 7.0), ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-1s", "1d", "1 s", "1e3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
