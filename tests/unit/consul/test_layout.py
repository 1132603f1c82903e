"""The key layout template: prefixes, keys, and parsing store keys back."""

from __future__ import annotations

import pytest

from opensmtpd.consul.layout import DEFAULT_LAYOUT, Layout, LayoutError
from opensmtpd.table import Service


def test_default_layout_is_the_seeds() -> None:
    layout = Layout(DEFAULT_LAYOUT)
    assert layout.prefix("aliases") == "aliases/"
    assert layout.key("aliases", Service.ALIAS, "root") == "aliases/alias/root"
    parser = layout.parser("aliases")
    assert parser.parse("aliases/alias/root") == (Service.ALIAS, "root")
    assert parser.parse("aliases/netaddr/10.0.0.0/8") == (Service.NETADDR, "10.0.0.0/8")
    assert parser.parse("aliases/mailaddr/@example.org") == (Service.MAILADDR, "@example.org")


@pytest.mark.parametrize("store_key", [
    "aliases/alias/",          # a folder, as the Consul UI makes
    "aliases/alias",           # no key
    "aliases/aliases/root",    # unknown service
    "aliasesX/alias/root",     # another table sharing the first letters
    "other/alias/root",
    "aliases/",
])
def test_keys_that_are_not_entries(store_key: str) -> None:
    assert Layout(DEFAULT_LAYOUT).parser("aliases").parse(store_key) is None


def test_layout_without_service_serves_every_service() -> None:
    layout = Layout("<table>/<key>")
    assert layout.prefix("domains") == "domains/"
    assert layout.key("domains", None, "example.org") == "domains/example.org"
    assert layout.parser("domains").parse("domains/example.org") == (None, "example.org")


def test_layout_without_table_is_shared() -> None:
    layout = Layout("mail/<service>/<key>")
    assert layout.prefix("aliases") == layout.prefix("other") == "mail/"
    assert not layout.has_table and layout.has_service
    assert layout.parser("x").parse("mail/alias/root") == (Service.ALIAS, "root")


def test_literal_parts_around_placeholders() -> None:
    layout = Layout("smtp/<table>/by-service/<service>.<key>")
    assert layout.prefix("t") == "smtp/t/by-service/"
    assert layout.key("t", "domain", "a.example") == "smtp/t/by-service/domain.a.example"
    parser = layout.parser("t")
    assert parser.parse("smtp/t/by-service/domain.a.example") == (Service.DOMAIN, "a.example")
    assert parser.parse("smtp/t/by-service/domain") is None


@pytest.mark.parametrize(("template", "message"), [
    ("<table>/<service>", "must end with <key>"),
    ("<table>/<key>/<key>", "more than once"),
    ("<service>/<table>/<key>", "<table> must come before"),
    ("<table>/<service><key>", "need a separator"),
    ("/<table>/<key>", "do not start with '/'"),
    ("<table>/<svc>/<key>", "unknown placeholder <svc>"),
])
def test_bad_layouts(template: str, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        Layout(template)


def test_key_needs_service_when_layout_has_one() -> None:
    with pytest.raises(LayoutError):
        Layout(DEFAULT_LAYOUT).key("t", None, "k")
