"""smtpd's static-table semantics (table_static.c): the indexes find the entry smtpd's
scan finds (first match in strcmp key order), for every service."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opensmtpd.table.match import MATCHERS, ascii_lower, exact_match, parse_netaddr
from opensmtpd.table.static import StaticEntries
from opensmtpd.table.wire.services import Service


def smtpd_scan(entries: dict[str, str], service: Service, key: str) -> str | None:
    """table_static_lookup() as written in C: the dict in strcmp order, first match."""
    match = MATCHERS.get(service, exact_match)
    lowered = {ascii_lower(k): v for k, v in entries.items()}
    for k in sorted(lowered, key=lambda k: k.encode("utf-8", "surrogateescape")):
        if (match(ascii_lower(key), k) if service in MATCHERS else ascii_lower(key) == k):
            return k
    return None


def test_keys_and_regex_patterns_are_lower_cased_as_smtpd_loads_them() -> None:
    table = StaticEntries({"ROOT": "a", "^ADMIN@": "b", "ÜNÏCODE": "c"})
    assert table.lookup(Service.ALIAS, "root") == "a"
    assert table.lookup(Service.ALIAS, "ROOT") == "a"       # the subject is lower-cased too
    assert table.check(Service.REGEX, "admin@example.org")   # "^admin@" after loading
    assert "ÜnÏcode" in table                                 # tolower(): ASCII only
    assert "ünïcode" not in table
    assert table.lookup(Service.ALIAS, "ÜNÏCODE") == "c"
    assert ascii_lower("ÄB") == "Äb"


def test_first_match_in_key_order_for_pattern_services() -> None:
    table = StaticEntries({"*.example.org": "wild", "mx.example.org": "exact"})
    # "*.example.org" < "mx.example.org" in strcmp order: the wildcard wins, as in smtpd
    assert table.lookup(Service.DOMAIN, "mx.example.org") == "wild"
    assert table.lookup(Service.STRING, "mx.example.org") == "exact"
    assert table.lookup(Service.STRING, "x.example.org") is None
    nets = StaticEntries({"10.0.0.0/8": "big", "10.1.0.0/16": "small", "10.1.2.3": "host"})
    assert nets.lookup(Service.NETADDR, "10.1.2.3") == "big"   # "10.0…" sorts first
    assert nets.lookup(Service.NETADDR, "11.0.0.1") is None


def test_mailaddr_forms() -> None:
    table = StaticEntries(dict.fromkeys(
        ["user", "@example.org", "b@example.net", "t+x@example.net", "@*.wild.test"], "v"))
    assert table.find(Service.MAILADDR, "user@anything.test") == "user"
    assert table.find(Service.MAILADDR, "a@example.org") == "@example.org"
    assert table.find(Service.MAILADDR, "b+tag@example.net") == "b@example.net"
    assert table.find(Service.MAILADDR, "t+x@example.net") == "t+x@example.net"
    assert table.find(Service.MAILADDR, "t@example.net") is None
    assert table.find(Service.MAILADDR, "z@mx.wild.test") == "@*.wild.test"
    assert table.find(Service.MAILADDR, "z@wild.test") is None
    assert StaticEntries({"@": "all"}).find(Service.MAILADDR, "nobody") == "@"


def test_netaddr_classful_and_bracketed_forms_as_inet_net_pton_reads_them() -> None:
    assert parse_netaddr("10.1") == (4, 0x0A010000, 16)
    assert parse_netaddr("10.0.0.1") == (4, 0x0A000001, 32)
    assert parse_netaddr("192.168.1") == (4, 0xC0A80100, 24)
    assert parse_netaddr("[IPv6:::1]") == (6, 1, 128)
    assert parse_netaddr("fe80::1%eth0") is None
    table = StaticEntries({"10.1": "v"})
    assert table.check(Service.NETADDR, "10.1.200.3")


def test_fetch_cycles_in_key_order() -> None:
    table = StaticEntries(dict.fromkeys(["127.0.0.3", "127.0.0.1", "127.0.0.2"]))
    assert [table.fetch() for _ in range(4)] == ["127.0.0.1", "127.0.0.2", "127.0.0.3",
                                                  "127.0.0.1"]
    assert StaticEntries().fetch() is None


def test_overlong_keys_are_dropped_as_smtpd_drops_them() -> None:
    assert len(StaticEntries({"a" * 1023: "x", "b" * 1024: "y"})) == 1


# --- the indexes against smtpd's scan, on generated tables ---

_LABEL = st.sampled_from(["a", "b", "mx", "example", "org", "*", "x*", "test"])
_DOMAIN = st.lists(_LABEL, min_size=1, max_size=3).map(".".join)
_USER = st.sampled_from(["", "a", "b", "a+t", "a+u", "root", "A"])
_MAILADDR = st.one_of(
    _USER, st.builds(lambda u, d: f"{u}@{d}", _USER, _DOMAIN), st.just("@"))
_NET = st.builds(lambda a, b, bits: f"10.{a}.{b}.0" + (f"/{bits}" if bits else ""),
                 st.integers(0, 3), st.integers(0, 3), st.sampled_from([0, 8, 16, 24, 30]))
_REGEX = st.sampled_from(["^a", "b$", "(?i)A", "x*", "[", "^a(b|c)", "example"])

KEYS = {Service.DOMAIN: _DOMAIN, Service.MAILADDR: _MAILADDR, Service.NETADDR: _NET,
        Service.REGEX: _REGEX, Service.STRING: _DOMAIN}
SUBJECTS = {Service.DOMAIN: _DOMAIN.filter(lambda d: "*" not in d),
            Service.MAILADDR: _MAILADDR.filter(lambda m: "*" not in m),
            Service.NETADDR: st.builds(lambda a, b, c: f"10.{a}.{b}.{c}", st.integers(0, 3),
                                       st.integers(0, 3), st.integers(0, 3)),
            Service.REGEX: _MAILADDR.filter(lambda m: "*" not in m),
            Service.STRING: _DOMAIN}


@pytest.mark.parametrize("service", list(KEYS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_indexes_find_what_the_scan_finds(service: Service, data: st.DataObject) -> None:
    keys = data.draw(st.lists(KEYS[service], max_size=12))
    entries = {k: f"v{i}" for i, k in enumerate(keys)}
    table = StaticEntries(entries)
    for _ in range(5):
        subject = data.draw(SUBJECTS[service])
        expected = smtpd_scan(entries, service, subject)
        assert table.find(service, subject) == expected, (entries, subject)
        assert table.check(service, subject) is (expected is not None)
