"""table-consul as smtpd runs it (through the driver, every protocol), and in process."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.smtpd import wait_for

from opensmtpd.consul.backend import BrokenTable, ConsulTable, build_table
from opensmtpd.consul.config import load
from opensmtpd.consul.layout import Layout
from opensmtpd.consul.store import EmbeddedStore
from opensmtpd.table import Error, Found, NotFound, Op, Request, Service, Updated
from opensmtpd.table.driver import Driver

from ..table.helpers import Started
from .fakes import FakeSource

SCRIPT = str(Path(sys.executable).parent / "table-consul")
S = Service


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Started]:
    started = Started(tmp_path)
    yield started
    started.close_all()


def conf(tmp_path: Path, text: str = "") -> tuple[str, EmbeddedStore]:
    database = tmp_path / "kv.sqlite3"
    path = tmp_path / "table-consul.conf"
    path.write_text(f"database = {database}\npoll_interval = 20ms\n{text}")
    return str(path), EmbeddedStore(str(database))


def lookup_value(driver: Driver, service: Service, key: str) -> str | None:
    reply = driver.lookup(service, key)
    return reply.value if isinstance(reply, Found) else None


@pytest.mark.parametrize("protocol", ["native", "imsg", "2020"])
def test_seed_scenario_embedded_store(tmp_path: Path, start: Started, protocol: str) -> None:
    """No store yet: error (never not-found); put: found; change: seen without restart."""
    # the 2020 dialect's unnamed form sends no table name: the config gives it (harmless
    # with the named form the driver sends)
    config, store = conf(tmp_path, "startup_wait = 200ms\n" +
                         ("table = aliases\n" if protocol == "2020" else ""))
    driver = start(SCRIPT, protocol=protocol, table="aliases", config=config)
    for reply in (driver.lookup(S.ALIAS, "root"), driver.check(S.DOMAIN, "example.org"),
                  driver.fetch(S.SOURCE)):
        assert isinstance(reply, Error), reply
    store.put("aliases/alias/root", b"gilles")
    assert wait_for(lambda: lookup_value(driver, S.ALIAS, "root") == "gilles", 10)
    assert isinstance(driver.lookup(S.ALIAS, "ghost"), NotFound)  # synced: a definite no
    store.put("aliases/alias/root", b"henry, gilles@poolp.org")
    assert wait_for(lambda: lookup_value(driver, S.ALIAS, "root") == "henry, gilles@poolp.org",
                    10)
    store.put("aliases/domain/*.example.org", b"")
    store.put("aliases/netaddr/192.0.2.0/24", b"")
    store.put("aliases/source/192.0.2.1", b"")
    store.put("aliases/source/192.0.2.2", b"")
    # fetch rotates: seeing 192.0.2.2, the last put, means every put above is synced
    assert wait_for(lambda: driver.fetch(S.SOURCE) == Found("192.0.2.2"), 10)
    assert driver.check(S.DOMAIN, "mx.example.org") == Found()
    assert driver.check(S.DOMAIN, "example.org") == NotFound()
    assert driver.check(S.NETADDR, "192.0.2.9") == Found()
    assert {driver.fetch(S.SOURCE), driver.fetch(S.SOURCE)} == {Found("192.0.2.1"),
                                                                Found("192.0.2.2")}
    assert driver.update() == Updated()
    stderr = start.stderr(driver)
    assert "synced 'aliases/'" in stderr and "first sync" in stderr
    assert driver.process.poll() is None


def test_values_smtpd_cannot_parse_are_errors(tmp_path: Path, start: Started) -> None:
    config, store = conf(tmp_path)
    store.put("t/userinfo/gilles", b"1000:not-a-gid")
    store.put("t/alias/empty", b"")
    store.put("t/alias/broken", b"a,,b")
    store.put("t/source/bad", b"")
    store.put("t/alias/latin1", "café".encode("latin-1"))
    store.put("t/userinfo/ok", b"1000:1000:/home/ok")
    driver = start(SCRIPT, table="t", config=config)
    assert lookup_value(driver, S.USERINFO, "ok") == "1000:1000:/home/ok"
    for service, key in ((S.USERINFO, "gilles"), (S.ALIAS, "empty"), (S.ALIAS, "broken"),
                         (S.ALIAS, "latin1")):
        assert isinstance(driver.lookup(service, key), Error), key
    assert isinstance(driver.fetch(S.SOURCE), Error)  # "bad" is not an IP address
    assert driver.process.poll() is None
    assert "invalid answer" in start.stderr(driver)


def test_stale_copy_then_error_when_the_store_disappears(tmp_path: Path,
                                                          start: Started) -> None:
    config, store = conf(tmp_path, "wait = 200ms\ntimeout = 100ms\nmax_staleness = 1s\n"
                                   "retry_min = 50ms\nretry_max = 100ms\n")
    store.put("t/alias/root", b"gilles")
    driver = start(SCRIPT, table="t", config=config)
    assert lookup_value(driver, S.ALIAS, "root") == "gilles"
    os.unlink(store.path)
    assert lookup_value(driver, S.ALIAS, "root") == "gilles"  # the last good copy
    assert wait_for(lambda: isinstance(driver.lookup(S.ALIAS, "root"), Error), 10)
    # never a not-found while the store is gone
    assert isinstance(driver.lookup(S.ALIAS, "ghost"), Error)
    assert isinstance(driver.update(), Error)           # smtpctl would report the failure
    store.put("t/alias/root", b"henry")                  # back: fresh answers again
    assert wait_for(lambda: lookup_value(driver, S.ALIAS, "root") == "henry", 10)
    stderr = start.stderr(driver)
    assert "past max_staleness" in stderr and "recovered after" in stderr
    assert "table-consul kv put" in stderr  # the error says how to create the store


def test_update_forces_a_resync(tmp_path: Path, start: Started) -> None:
    # a poll interval far longer than the test: only smtpctl update can show the change
    config, store = conf(tmp_path, "")
    Path(config).write_text(Path(config).read_text().replace("poll_interval = 20ms",
                                                             "poll_interval = 1h"))
    store.put("t/alias/root", b"gilles")
    driver = start(SCRIPT, table="t", config=config)
    assert lookup_value(driver, S.ALIAS, "root") == "gilles"
    store.put("t/alias/root", b"henry")
    assert lookup_value(driver, S.ALIAS, "root") == "gilles"
    assert driver.update() == Updated()
    assert lookup_value(driver, S.ALIAS, "root") == "henry"
    assert "forced re-sync of 't/'" in start.stderr(driver)


@pytest.mark.parametrize("protocol", ["native", "imsg"])
def test_configuration_error_answers_error_and_keeps_running(
        tmp_path: Path, start: Started, protocol: str) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("store = consul\nwiat = 5s\n")
    driver = start(SCRIPT, protocol=protocol, table="t", config=str(path))
    for _ in range(3):
        reply = driver.lookup(S.ALIAS, "root")
        assert isinstance(reply, Error), reply
    assert isinstance(driver.update(), Error)
    assert driver.process.poll() is None
    stderr = start.stderr(driver)
    assert f"{path}:2: unknown key 'wiat' (did you mean wait?)" in stderr
    if protocol == "native":
        assert "unknown key" in reply.reason


def test_consul_unreachable_token_never_logged(tmp_path: Path, start: Started) -> None:
    secret = "9f8e7d6c-1111-4222-8333-444455556666"
    token = tmp_path / "token"
    token.write_text(secret)
    path = tmp_path / "c.conf"
    # nothing listens on port 1 of loopback: connection refused
    path.write_text(f"store = consul\naddress = 127.0.0.1:1\ntoken_file = {token}\n"
                    "startup_wait = 1s\nretry_min = 50ms\nretry_max = 100ms\n")
    driver = start(SCRIPT, table="t", config=str(path))
    reply = driver.lookup(S.ALIAS, "root")
    assert isinstance(reply, Error) and "not synced yet" in reply.reason, reply
    assert isinstance(driver.update(), Error)
    stderr = start.stderr(driver)
    assert "sync of 't/' failed" in stderr and "ConnectError" in stderr
    assert secret not in stderr and secret not in reply.reason
    cmdline = Path(f"/proc/{driver.process.pid}/cmdline").read_bytes()
    assert secret.encode() not in cmdline


# --- in process, with a fake store ---

def request(op: Op, service: Service | None, key: str | None, table: str = "t") -> Request:
    return Request(op, "1", table, service, key, str(service or ""))


def test_table_in_process_with_fake_source(tmp_path: Path) -> None:
    config = load(None, env={})
    source = FakeSource({"t/alias/root": b"gilles", "u/alias/root": b"other"})
    table = ConsulTable(config, source=source)
    try:
        assert table.answer(request(Op.LOOKUP, S.ALIAS, "root")) == Found("gilles")
        assert table.answer(request(Op.LOOKUP, S.ALIAS, "root", "u")) == Found("other")
        assert table.answer(request(Op.CHECK, S.ALIAS, "root")) == Found()
        assert table.answer(request(Op.UPDATE, None, None)) == Updated()
        source.fail(ConnectionError("gone"))
        reply = table.answer(request(Op.UPDATE, None, None))
        assert isinstance(reply, Error) and "gone" in reply.reason
        assert table.answer(request(Op.LOOKUP, S.ALIAS, "root")) == Found("gilles")  # stale
    finally:
        table.close()


def test_shared_layout_starts_watching_before_any_request() -> None:
    config = dataclasses.replace(load(None, env={}), key_layout=Layout("mail/<service>/<key>"))
    source = FakeSource({"mail/alias/root": b"gilles"})
    table = ConsulTable(config, source=source)
    try:
        assert wait_for(lambda: bool(source.calls), 5)  # no request yet
        assert table.answer(request(Op.LOOKUP, S.ALIAS, "root", "anything")) == Found("gilles")
    finally:
        table.close()


def test_2020_dialect_without_a_table_name_is_an_error(tmp_path: Path, start: Started) -> None:
    config, store = conf(tmp_path)
    store.put("aliases/alias/root", b"gilles")
    # the never-merged C procexec's form carries no table name (the article's form does)
    driver = start(SCRIPT, protocol="2020", table="aliases", config=config, form_2020="unnamed")
    reply = driver.lookup(S.ALIAS, "root")
    assert isinstance(reply, Error), reply
    assert "set table = NAME" in start.stderr(driver)


def test_build_table_reports_configuration_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text("consistency = sometimes\n")
    table = build_table(str(path))
    assert isinstance(table, BrokenTable)
    reply = table.answer(request(Op.LOOKUP, S.ALIAS, "root"))
    assert isinstance(reply, Error) and f"{path}:1: consistency" in reply.reason


def test_build_table_survives_a_missing_dependency(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception at start (httpx not installed for smtpd's python) is an error table,
    not an exit: a table that exits takes smtpd 6.8 down."""
    import opensmtpd.consul.backend as backend

    def broken(config: object) -> None:
        raise ModuleNotFoundError("No module named 'httpx'")

    monkeypatch.setattr(backend, "ConsulTable", broken)
    table = build_table(None)
    assert isinstance(table, BrokenTable)
    assert isinstance(table.answer(request(Op.LOOKUP, S.ALIAS, "root")), Error)


def test_main_without_arguments_on_a_terminal_prints_usage() -> None:
    result = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "kv" in result.stdout


@pytest.mark.parametrize("protocol", ["native", "imsg"])
def test_configuration_error_is_labelled_with_the_table_name(
        tmp_path: Path, start: Started, protocol: str) -> None:
    """Issue 13 finding 8: the first line of a bad config is ``table NAME[PID]: …`` (the
    table's handshake names it), never the logger's ``opensmtpd.consul[PID]``."""
    path = tmp_path / "bad.conf"
    path.write_text("consistency = sometimes\n")
    driver = start(SCRIPT, protocol=protocol, table="aliases", config=str(path))
    assert isinstance(driver.lookup(S.ALIAS, "root"), Error)
    lines = start.stderr(driver).splitlines()
    first = next(line for line in lines if "configuration error" in line)
    assert first.startswith("table aliases["), lines
    assert f"{path}:1: consistency" in first
    assert not any("opensmtpd.consul" in line for line in lines), lines
