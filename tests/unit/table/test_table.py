"""Table (_table.py): what handlers return becomes a reply smtpd can parse, or an error."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest

from opensmtpd.table import Table, TempFail
from opensmtpd.table.wire.events import Error, Found, NotFound, Op, Request, Updated
from opensmtpd.table.wire.services import ALL_BUT_AUTH, Service

PASSWORD = "s3cret-hunter2"


def req(op: Op, service: Service | None = None, key: str | None = None,
        request_id: str = "0000000a", raw: str | None = None) -> Request:
    raw_service = raw if raw is not None else (service.value if service else "")
    return Request(op, request_id, "t", service, key, raw_service)


def answer(table: Table, request: Request) -> Any:
    reply = table.answer(request)
    if inspect.iscoroutine(reply):
        return asyncio.run(reply)
    return reply


# --- check ----------------------------------------------------------------------------

@pytest.mark.parametrize(("returned", "expected"), [
    (True, Found()), (False, NotFound()), (None, NotFound()),
])
def test_check_return_values(returned: Any, expected: Any) -> None:
    table = Table()
    table.check("domain")(lambda key: returned)
    assert answer(table, req(Op.CHECK, Service.DOMAIN, "example.org")) == expected


@pytest.mark.parametrize("returned", ["yes", 1, ["a"], 0])
def test_check_must_return_a_bool(returned: Any) -> None:
    table = Table()
    table.check("domain")(lambda key: returned)
    assert isinstance(answer(table, req(Op.CHECK, Service.DOMAIN, "x")), Error)


def test_check_handler_gets_the_key() -> None:
    seen = []
    table = Table()

    @table.check("mailaddr")
    def check(key: str) -> bool:
        seen.append(key)
        return key == "gilles@poolp.org"

    assert answer(table, req(Op.CHECK, Service.MAILADDR, "gilles@poolp.org")) == Found()
    assert answer(table, req(Op.CHECK, Service.MAILADDR, "other@poolp.org")) == NotFound()
    assert seen == ["gilles@poolp.org", "other@poolp.org"]


# --- lookup ---------------------------------------------------------------------------

@pytest.mark.parametrize(("service", "returned", "expected"), [
    (Service.ALIAS, "gilles@poolp.org", Found("gilles@poolp.org")),
    (Service.ALIAS, ["a@x.org", "b@x.org"], Found("a@x.org, b@x.org")),
    (Service.ALIAS, ("a@x.org", "b@x.org"), Found("a@x.org, b@x.org")),
    (Service.MAILADDRMAP, ["alice@example.net", "@alias.test"],
     Found("alice@example.net, @alias.test")),
    (Service.USERINFO, ["1000:1000:/home/alice"], Found("1000:1000:/home/alice")),
    (Service.ALIAS, None, NotFound()),
    (Service.ALIAS, [], NotFound()),
])
def test_lookup_return_values(service: Service, returned: Any, expected: Any) -> None:
    table = Table()
    table.lookup(service)(lambda key: returned)
    assert answer(table, req(Op.LOOKUP, service, "root")) == expected


@pytest.mark.parametrize(("service", "returned"), [
    (Service.USERINFO, ["1000:1000:/a", "1001:1001:/b"]),   # one value only
    (Service.DOMAIN, ["a.org", "b.org"]),
    (Service.CREDENTIALS, ["alice:x", "alice:y"]),
    (Service.ALIAS, 42),
    (Service.ALIAS, True),
    (Service.ALIAS, [b"bytes"]),
    (Service.ALIAS, ["ok", None]),
    (Service.ALIAS, {"a": "b"}),
])
def test_lookup_returns_smtpd_cannot_take_fail(service: Service, returned: Any) -> None:
    table = Table()
    table.lookup(service)(lambda key: returned)
    assert isinstance(answer(table, req(Op.LOOKUP, service, "k")), Error)


@pytest.mark.parametrize(("service", "value"), [
    (Service.USERINFO, "alice"),               # not uid:gid:/dir
    (Service.USERINFO, "1000:1000:home"),
    (Service.SOURCE, "not-an-ip"),
    (Service.NETADDR, "example.org"),
    (Service.ALIAS, ""),                       # empty is not "not found"
    (Service.ALIAS, "a\nb"),
    (Service.ALIAS, "a,,b"),
    (Service.ALIAS, "x" * 2048),
])
def test_invalid_values_are_failures_never_not_found(service: Service, value: str) -> None:
    table = Table()
    table.lookup(service)(lambda key: value)
    reply = answer(table, req(Op.LOOKUP, service, "k"))
    assert isinstance(reply, Error)
    assert "invalid" in reply.reason


def test_a_value_valid_for_one_service_is_still_checked_for_another() -> None:
    table = Table()
    table.lookup("alias", "userinfo")(lambda key: "alice")
    for _ in range(2):  # the second round may be served from any cache: same answers
        assert answer(table, req(Op.LOOKUP, Service.ALIAS, "k")) == Found("alice")
        assert isinstance(answer(table, req(Op.LOOKUP, Service.USERINFO, "k")), Error)


def test_validated_values_kept_are_bounded_per_service() -> None:
    from opensmtpd.table._table import FOUND_CACHE_SIZE

    table = Table()
    table.lookup("alias", "domain")(lambda key: key)
    for i in range(3 * FOUND_CACHE_SIZE):  # every value different: each one kept, until full
        for service in (Service.ALIAS, Service.DOMAIN):
            reply = answer(table, req(Op.LOOKUP, service, f"v{i}.example.org"))
            assert reply == Found(f"v{i}.example.org")
    kept = [len(values) for values in table._found.values()]
    assert kept and max(kept) <= FOUND_CACHE_SIZE
    assert sum(kept) <= 2 * FOUND_CACHE_SIZE


# --- fetch ----------------------------------------------------------------------------

def test_fetch_rotates_over_a_list() -> None:
    table = Table()
    table.fetch("source")(lambda: ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    got = [answer(table, req(Op.FETCH, Service.SOURCE)) for _ in range(5)]
    assert got == [Found("127.0.0.1"), Found("127.0.0.2"), Found("127.0.0.3"),
                   Found("127.0.0.1"), Found("127.0.0.2")]


def test_fetch_single_value_and_none() -> None:
    table = Table()
    table.fetch("relayhost")(lambda: "smtp://relay.example.org")
    table.fetch("source")(lambda: None)
    assert answer(table, req(Op.FETCH, Service.RELAYHOST)) == Found("smtp://relay.example.org")
    assert answer(table, req(Op.FETCH, Service.SOURCE)) == NotFound()


def test_fetch_value_is_validated() -> None:
    table = Table()
    table.fetch("source")(lambda: "gilles@poolp.org")
    assert isinstance(answer(table, req(Op.FETCH, Service.SOURCE)), Error)


# --- update ---------------------------------------------------------------------------

def test_update_runs_the_handler() -> None:
    calls = []
    table = Table()
    table.update(lambda: calls.append("reloaded"))
    assert answer(table, req(Op.UPDATE)) == Updated()
    assert calls == ["reloaded"]


def test_update_without_handler_is_ok() -> None:
    assert answer(Table(), req(Op.UPDATE)) == Updated()


def test_update_failures() -> None:
    table = Table()

    @table.update
    def reload() -> None:
        raise TempFail("database unreachable")

    assert answer(table, req(Op.UPDATE)) == Error("database unreachable")

    @table.update
    def reload_again() -> None:
        raise TempFail("reload failed")

    assert answer(table, req(Op.UPDATE)) == Error("reload failed")


# --- failures -------------------------------------------------------------------------

def test_tempfail_keeps_its_message() -> None:
    table = Table()

    @table.lookup("alias")
    def alias(key: str) -> str:
        raise TempFail("ldap server down")

    assert answer(table, req(Op.LOOKUP, Service.ALIAS, "root")) == Error("ldap server down")


def test_tempfail_without_message() -> None:
    table = Table()

    @table.check("domain")
    def check(key: str) -> bool:
        raise TempFail()

    reply = answer(table, req(Op.CHECK, Service.DOMAIN, "x"))
    assert isinstance(reply, Error) and reply.reason


@pytest.mark.parametrize("exc", [KeyError("x"), ZeroDivisionError(), OSError("disk"),
                                 RuntimeError("boom"), ValueError("v")])
def test_any_exception_is_a_failure(exc: Exception) -> None:
    table = Table()

    def handler(key: str) -> str:
        raise exc

    table.lookup("alias")(handler)
    reply = answer(table, req(Op.LOOKUP, Service.ALIAS, "root"))
    assert isinstance(reply, Error)
    assert type(exc).__name__ in reply.reason


def test_raising_tempfail_is_the_way_to_fail() -> None:
    table = Table()

    def fail(key: str) -> str:
        raise TempFail("custom")

    table.lookup("alias")(fail)
    table.check("domain")(fail)
    assert answer(table, req(Op.LOOKUP, Service.ALIAS, "k")) == Error("custom")
    assert answer(table, req(Op.CHECK, Service.DOMAIN, "k")) == Error("custom")


@pytest.mark.parametrize("returned", [Error("custom"), Found("x"), NotFound(), Updated()])
@pytest.mark.parametrize("op", [Op.LOOKUP, Op.CHECK, Op.UPDATE])
def test_returning_a_reply_object_is_an_invalid_answer_never_ok(
        op: Op, returned: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Handlers fail by raising: a returned Error (once an API) is an error all the same,
    never "ok" for an update, and the log says how to fail."""
    table = Table()
    table.on(op, ["alias"], lambda *key: returned)
    reply = answer(table, req(op, Service.ALIAS if op is not Op.UPDATE else None, "k"
                             if op is not Op.UPDATE else None))
    assert isinstance(reply, Error) and "invalid answer" in reply.reason
    assert "TempFail" in caplog.text


def test_unregistered_service_is_an_error_by_default() -> None:
    table = Table()
    table.lookup("alias")(lambda key: "x")
    assert isinstance(answer(table, req(Op.LOOKUP, Service.DOMAIN, "k")), Error)
    assert isinstance(answer(table, req(Op.CHECK, Service.ALIAS, "k")), Error)  # other op


def test_unregistered_service_can_be_not_found() -> None:
    table = Table(unregistered="not-found")
    table.lookup("alias")(lambda key: "x")
    assert answer(table, req(Op.LOOKUP, Service.DOMAIN, "k")) == NotFound()
    assert answer(table, req(Op.LOOKUP, Service.ALIAS, "k")) == Found("x")


@pytest.mark.parametrize("unregistered", ["error", "not-found"])
def test_unknown_service_is_always_an_error(unregistered: Any) -> None:
    # a service this library does not know (e.g. imsg 0x4000): never a bounce
    table = Table(unregistered=unregistered)
    table.lookup()(lambda key: "x")
    reply = answer(table, req(Op.LOOKUP, None, "k", raw="0x4000"))
    assert isinstance(reply, Error)


def test_bad_options() -> None:
    with pytest.raises(ValueError):
        Table(unregistered="bounce")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Table(deadline=0)
    with pytest.raises(ValueError):
        Table().lookup("bogus")(lambda key: None)


# --- registration ---------------------------------------------------------------------

def test_services_lists_only_services_with_handlers() -> None:
    table = Table()
    assert table.services == ()
    table.update(lambda: None)
    assert table.services == ()
    table.lookup("alias", Service.USERINFO)(lambda key: None)
    table.check("domain")(lambda key: True)
    table.fetch("alias")(lambda: None)
    assert table.services == (Service.ALIAS, Service.USERINFO, Service.DOMAIN)  # type: ignore[comparison-overlap]


def test_no_service_given_means_every_service_but_auth() -> None:
    table = Table()
    table.check()(lambda key: True)
    assert table.services == ALL_BUT_AUTH
    assert isinstance(answer(table, req(Op.CHECK, Service.AUTH, "alice:pw")), Error)


def test_service_names_are_case_insensitive_at_registration() -> None:
    table = Table()
    table.lookup("ALIAS")(lambda key: "x")
    assert table.services == (Service.ALIAS,)


def test_decorators_return_the_function() -> None:
    table = Table()

    def fn(key: str) -> bool:
        return True

    assert table.check("domain")(fn) is fn
    assert table.update(fn) is fn


# --- async and request= ---------------------------------------------------------------

def test_async_handler_returns_a_coroutine_resolving_to_the_reply() -> None:
    table = Table()

    @table.lookup("alias")
    async def alias(key: str) -> list[str]:
        await asyncio.sleep(0)
        return [f"{key}@a.org", f"{key}@b.org"]

    pending = table.answer(req(Op.LOOKUP, Service.ALIAS, "root"))
    assert inspect.iscoroutine(pending)
    assert asyncio.run(pending) == Found("root@a.org, root@b.org")


def test_async_handler_failures() -> None:
    table = Table()

    @table.check("domain")
    async def check(key: str) -> bool:
        raise TempFail("later")

    @table.lookup("userinfo")
    async def userinfo(key: str) -> str:
        return "not-userinfo"

    assert answer(table, req(Op.CHECK, Service.DOMAIN, "x")) == Error("later")
    assert isinstance(answer(table, req(Op.LOOKUP, Service.USERINFO, "x")), Error)


def test_handler_declaring_request_receives_it() -> None:
    seen: list[Request] = []
    table = Table()

    @table.lookup("alias", "domain")
    def lookup(key: str, request: Request) -> str:
        seen.append(request)
        return f"{request.service}-{key}"

    @table.fetch("source")
    def fetch(request: Request) -> str:
        seen.append(request)
        return "127.0.0.1"

    first = req(Op.LOOKUP, Service.DOMAIN, "example.org", request_id="00000001")
    assert answer(table, first) == Found("domain-example.org")
    assert answer(table, req(Op.FETCH, Service.SOURCE)) == Found("127.0.0.1")
    assert seen[0] is first
    assert seen[1].op is Op.FETCH


def test_handler_without_request_parameter_does_not_get_it() -> None:
    table = Table()
    table.lookup("alias")(lambda key: key.upper())  # would fail with an unexpected kwarg
    assert answer(table, req(Op.LOOKUP, Service.ALIAS, "root")) == Found("ROOT")


# --- secrets never logged ---------------------------------------------------------------

def auth_request() -> Request:
    return req(Op.CHECK, Service.AUTH, f"alice:{PASSWORD}")


@pytest.mark.parametrize("raised", [
    RuntimeError(f"bad password {PASSWORD}"),
    TempFail(f"cannot verify {PASSWORD}"),
    KeyError(PASSWORD),
])
def test_auth_password_never_logged_when_a_handler_raises(
        caplog: pytest.LogCaptureFixture, raised: Exception) -> None:
    caplog.set_level(logging.DEBUG, logger="opensmtpd")
    table = Table()

    @table.check("auth")
    def auth(key: str) -> bool:
        raise raised

    reply = answer(table, auth_request())
    assert isinstance(reply, Error)
    assert PASSWORD not in reply.reason
    assert caplog.records, "the failure should be logged"
    assert "alice" in caplog.text  # the user is shown, for the admin
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
    assert PASSWORD not in caplog.text


def test_auth_password_never_logged_on_invalid_answer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="opensmtpd")
    table = Table()
    table.check("auth")(lambda key: key)  # returns the key (with the password): not a bool
    assert isinstance(answer(table, auth_request()), Error)
    assert caplog.records
    assert PASSWORD not in caplog.text


def test_auth_password_never_logged_by_async_handlers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="opensmtpd")
    table = Table()

    @table.check("auth")
    async def auth(key: str) -> bool:
        raise RuntimeError(f"leak {key}")

    assert isinstance(answer(table, auth_request()), Error)
    assert caplog.records
    assert PASSWORD not in caplog.text


def test_credentials_handler_exception_text_is_not_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    table = Table()

    @table.lookup("credentials")
    def credentials(key: str) -> str:
        raise ValueError("bad entry alice:$6$salt$SECRETHASH")

    request = Request(Op.LOOKUP, "1", "creds", Service.CREDENTIALS, "alice")
    caplog.set_level(logging.DEBUG, logger="opensmtpd")
    assert isinstance(table.answer(request), Error)
    assert "ValueError" in caplog.text and "SECRETHASH" not in caplog.text
