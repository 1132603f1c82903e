"""The one API of ``Filter``: ``on_*`` decorators, options checked once, nothing else to
learn (the aliases and the callback twin are gone)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import opensmtpd.filter as public
from opensmtpd.filter import Config, Filter, reject


def test_decorator_factories_and_plain_decorators() -> None:
    f = Filter()

    @f.on_report("link-connect", "tx-mail", subsystem="*")
    def seen(session: Any, event: Any) -> None: ...

    @f.on_phase("helo", "ehlo")
    def greet(session: Any, query: Any) -> Any:
        return reject("550 5.7.1 no")

    @f.on_data_line
    def line(session: Any, text: str) -> str:
        return text

    for decorator in (f.on_config, f.on_malformed, f.on_unknown, f.on_evict):
        assert decorator(seen) is seen
    assert (seen, greet, line) == (seen, greet, line)  # each decorator returns the function
    out = f.feed(b"config|smtpd-version|7.6.0-portable\nconfig|protocol|0.7\n"
                 b"config|subsystem|smtp-in\nconfig|subsystem|smtp-out\nconfig|ready\n")
    assert out.decode().splitlines() == [
        "register|report|smtp-in|link-connect", "register|report|smtp-in|link-disconnect",
        "register|report|smtp-in|tx-mail", "register|report|smtp-out|link-connect",
        "register|report|smtp-out|link-disconnect", "register|report|smtp-out|tx-mail",
        "register|filter|smtp-in|helo", "register|filter|smtp-in|ehlo",
        "register|filter|smtp-in|data-line", "register|ready"]


def test_misuse_says_what_to_write() -> None:
    f = Filter()
    with pytest.raises(TypeError, match='on_report\\("link-connect"\\)'):
        f.on_report(lambda s, e: None)  # type: ignore[arg-type]  # @f.on_report without ()
    with pytest.raises(TypeError, match='on_phase\\("mail-from"\\)'):
        f.on_phase(lambda s, q: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        f.on_phase()
    with pytest.raises(TypeError, match="callable"):
        f.on_phase("helo")("not a function")  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [
    {"on_error": "bounce"}, {"tempfail_reply": "550 5.0.0 no"}, {"tempfail_reply": "451"},
    {"deadline": 0}, {"deadline": "soon"}, {"max_sessions": 0},
])
def test_options_checked_once(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Filter(**options)


def test_options_fixed_for_the_filters_life() -> None:
    f = Filter("name", on_error="tempfail", tempfail_reply="450 4.7.1 later", deadline=2)
    assert (f.name, f.on_error, f.tempfail_reply, f.deadline) == (
        "name", "tempfail", "450 4.7.1 later", 2.0)
    with pytest.raises(AttributeError):
        f.on_error = "proceed"  # type: ignore[misc]


def test_one_spelling() -> None:
    """What a filter author has: the decorators, the options, run() and feed()."""
    api = {name for name in dir(Filter) if not name.startswith("_")}
    assert api == {"config", "deadline", "feed", "is_async", "name", "on_config",
                   "on_data_line", "on_error", "on_evict", "on_malformed", "on_message",
                   "on_phase", "on_report", "on_unknown", "run", "sessions",
                   "tempfail_reply"}
    assert not hasattr(public, "callbacks") and not hasattr(public, "dispatch")
    assert {"proceed", "junk", "reject", "disconnect", "rewrite", "report"} <= set(
        public.__all__)


def test_async_config_handler_awaited() -> None:
    f = Filter()
    seen: list[str] = []

    @f.on_config
    async def configured(config: Config) -> None:
        await asyncio.sleep(0)
        seen.append(config.smtpd_version)

    assert f.is_async
    assert f.feed(b"config|smtpd-version|6.8.0p2\nconfig|ready\n") == b"register|ready\n"
    assert seen == ["6.8.0p2"] and f.config is not None
