"""The seed's 2020 module API, through the Table it builds (table-protocols.md §4.2-§4.3)."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from opensmtpd.table import _api2020 as api2020
from opensmtpd.table.wire.events import Error, Found, NotFound, Op, Request, Updated
from opensmtpd.table.wire.services import ALL_BUT_AUTH, Service

from .helpers import SEED_EXAMPLE


@pytest.fixture(autouse=True)
def fresh_callbacks() -> Iterator[None]:
    saved = dict(api2020._callbacks)
    api2020._callbacks.clear()
    yield
    api2020._callbacks.clear()
    api2020._callbacks.update(saved)


@pytest.fixture
def seed() -> ModuleType:
    """examples/seed_table.py, imported (its main() is not run)."""
    spec = importlib.util.spec_from_file_location("seed_table", SEED_EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    api2020.on_check(module.check)
    api2020.on_lookup(module.lookup)
    api2020.on_fetch(module.fetch)
    return module


def ask(op: Op, service: Service | None = None, key: str | None = None,
        request_id: str = "0a1b2c3d", table: str = "seedtable") -> Any:
    built = api2020.build(deadline=5)
    return built.answer(Request(op, request_id, table, service, key,
                                service.value if service else ""))


# --- the seed example -------------------------------------------------------------------

def test_seed_check(seed: ModuleType) -> None:
    assert ask(Op.CHECK, Service.MAILADDR, "gilles@poolp.org") == Found()
    assert ask(Op.CHECK, Service.MAILADDR, "eric@poolp.org") == NotFound()


def test_seed_lookup(seed: ModuleType) -> None:
    assert ask(Op.LOOKUP, Service.ALIAS, "root") == Found("gilles@poolp.org")
    assert ask(Op.LOOKUP, Service.ALIAS, "postmaster") == NotFound()   # result(token)
    assert ask(Op.LOOKUP, Service.DOMAIN, "root") == NotFound()        # service == "alias"


def test_seed_fetch(seed: ModuleType) -> None:
    assert ask(Op.FETCH, Service.MAILADDR) == Found("gilles@poolp.org")
    # an address is no source IP: smtpd could not use it, so it is a failure, not a crash
    assert isinstance(ask(Op.FETCH, Service.SOURCE), Error)


def test_seed_update_without_callback_is_acknowledged(seed: ModuleType) -> None:
    assert ask(Op.UPDATE) == Updated()


def test_built_table_serves_every_service_but_auth() -> None:
    assert api2020.build().services == ALL_BUT_AUTH


# --- callbacks and reply functions -----------------------------------------------------

def test_callback_arguments() -> None:
    seen: list[tuple[Any, ...]] = []

    def lookup(token: str, table_name: str, service: Any, key: str) -> None:
        seen.append((token, table_name, service, key))
        api2020.result(token, "x@example.org")

    def fetch(token: str, table_name: str, service: Any) -> None:
        seen.append((token, table_name, service))
        api2020.result(token, "127.0.0.1")

    def update(token: str, table_name: str) -> None:
        seen.append((token, table_name))
        api2020.updated(token)

    api2020.on_lookup(lookup)
    api2020.on_fetch(fetch)
    api2020.on_update(update)
    ask(Op.LOOKUP, Service.ALIAS, "root", request_id="00000001", table="aliases")
    ask(Op.FETCH, Service.SOURCE, request_id="00000002", table="aliases")
    assert ask(Op.UPDATE, request_id="00000003", table="aliases") == Updated()
    assert seen[0] == ("00000001", "aliases", "alias", "root")  # the service == its name
    assert seen[1] == ("00000002", "aliases", "source")
    assert seen[2] == ("00000003", "aliases")


def test_result_with_no_value_is_not_found() -> None:
    api2020.on_lookup(lambda token, name, service, key: api2020.result(token))
    assert ask(Op.LOOKUP, Service.ALIAS, "root") == NotFound()
    api2020.on_lookup(lambda token, name, service, key: api2020.result(token, None))
    assert ask(Op.LOOKUP, Service.ALIAS, "root") == NotFound()


def test_result_with_several_values_on_a_list_service() -> None:
    api2020.on_lookup(lambda token, name, service, key: api2020.result(token, "a@x", "b@x"))
    assert ask(Op.LOOKUP, Service.ALIAS, "root") == Found("a@x, b@x")


def test_boolean_on_check() -> None:
    api2020.on_check(lambda token, name, service, key: api2020.boolean(token, key == "yes"))
    assert ask(Op.CHECK, Service.STRING, "yes") == Found()
    assert ask(Op.CHECK, Service.STRING, "no") == NotFound()


def test_result_on_check_means_found() -> None:
    api2020.on_check(lambda token, name, service, key: api2020.result(token, "anything"))
    assert ask(Op.CHECK, Service.STRING, "k") == Found()
    api2020.on_check(lambda token, name, service, key: api2020.result(token))
    assert ask(Op.CHECK, Service.STRING, "k") == NotFound()


def test_boolean_true_cannot_answer_a_lookup() -> None:
    # a bare "found" on a lookup would kill smtpd 7.6: it becomes an error instead
    api2020.on_lookup(lambda token, name, service, key: api2020.boolean(token, True))
    assert isinstance(ask(Op.LOOKUP, Service.ALIAS, "root"), Error)
    api2020.on_lookup(lambda token, name, service, key: api2020.boolean(token, False))
    assert ask(Op.LOOKUP, Service.ALIAS, "root") == NotFound()


def test_failure() -> None:
    api2020.on_lookup(lambda token, name, service, key: api2020.failure(token))
    api2020.on_check(lambda token, name, service, key: api2020.failure(token))
    api2020.on_update(lambda token, name: api2020.failure(token))
    assert isinstance(ask(Op.LOOKUP, Service.ALIAS, "root"), Error)
    assert isinstance(ask(Op.CHECK, Service.DOMAIN, "x"), Error)
    assert isinstance(ask(Op.UPDATE), Error)  # smtpctl must say "command failed"


def test_failure_raises_inside_the_handler(caplog: pytest.LogCaptureFixture) -> None:
    """failure(token) fails the one way a Table handler fails: by raising TempFail, whose
    reason reaches smtpd and the log."""
    api2020.on_lookup(lambda token, name, service, key: api2020.failure(token))
    caplog.set_level(logging.INFO, logger="opensmtpd")
    assert ask(Op.LOOKUP, Service.ALIAS, "root") == Error("failure")
    assert "temporary failure: failure" in caplog.text
    api2020.on_lookup(lambda token, name, service, key: api2020.boolean(token, True))
    reply = ask(Op.LOOKUP, Service.ALIAS, "root")
    assert isinstance(reply, Error) and "use result()" in reply.reason


def test_updated() -> None:
    api2020.on_update(lambda token, name: api2020.updated(token))
    assert ask(Op.UPDATE) == Updated()


def test_reply_from_another_thread_after_the_callback_returned() -> None:
    returned = threading.Event()

    def lookup(token: str, name: str, service: Any, key: str) -> None:
        def later() -> None:
            assert returned.wait(5)
            api2020.result(token, f"{key}@late.example.org")
        threading.Thread(target=later).start()
        returned.set()  # the callback returns before the answer exists

    api2020.on_lookup(lookup)
    assert ask(Op.LOOKUP, Service.ALIAS, "root") == Found("root@late.example.org")


def test_first_reply_wins(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="opensmtpd")

    def lookup(token: str, name: str, service: Any, key: str) -> None:
        api2020.result(token, "first@example.org")
        api2020.result(token, "second@example.org")

    api2020.on_lookup(lookup)
    assert ask(Op.LOOKUP, Service.ALIAS, "root") == Found("first@example.org")
    assert "second reply" in caplog.text


def test_reply_for_an_unknown_token_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="opensmtpd")
    api2020.result("no-such-token", "x")  # must not raise
    api2020.failure("no-such-token")
    assert "unknown or expired token" in caplog.text


def test_callback_that_raises_is_a_failure() -> None:
    def lookup(token: str, name: str, service: Any, key: str) -> None:
        raise RuntimeError("boom")

    api2020.on_lookup(lookup)
    assert isinstance(ask(Op.LOOKUP, Service.ALIAS, "root"), Error)


def test_missing_callback_is_a_failure_not_a_crash() -> None:
    assert isinstance(ask(Op.LOOKUP, Service.ALIAS, "root"), Error)
    assert isinstance(ask(Op.CHECK, Service.DOMAIN, "x"), Error)
    assert isinstance(ask(Op.FETCH, Service.SOURCE), Error)
