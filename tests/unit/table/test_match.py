"""CHECK semantics of smtpd's static tables (util.c hostname_match, mailaddr.c
mailaddr_match, table.c table_netaddr_match / table_regex_match; table-protocols.md §1.6)."""

from __future__ import annotations

import pytest

from opensmtpd.table._posix_regex import EXACT
from opensmtpd.table.match import (
    domain_match,
    mailaddr_match,
    matches,
    netaddr_match,
    regex_match,
)
from opensmtpd.table.wire.services import Service


@pytest.mark.parametrize(("subject", "pattern", "expected"), [
    ("mx.example.org", "*.example.org", True),
    ("example.org", "*.example.org", False),       # no label for the '*'
    ("a.b.example.org", "*.example.org", False),   # '*' stops at the first '.'
    ("MX.Example.ORG", "*.example.org", True),     # tolower() on both sides
    ("mx.example.org", "*.EXAMPLE.org", True),
    ("example.org", "example.org", True),
    ("Example.Org", "example.org", True),
    ("example.org", "example.com", False),
    ("example.org", "example.or", False),
    ("example.or", "example.org", False),
    ("mx1.example.org", "mx*.example.org", True),
    ("anything.at.all", "*", True),
    ("", "*", False),                              # the loop never runs: pattern left
    ("aba", "*a", False),                          # no backtracking, unlike fnmatch
    ("mx.example.org", "**.example.org", True),    # consecutive stars collapse
])
def test_domain_match_is_hostname_match(subject: str, pattern: str, expected: bool) -> None:
    assert domain_match(subject, pattern) is expected


@pytest.mark.parametrize(("subject", "entry", "expected"), [
    # "user": any domain
    ("user@example.org", "user", True),
    ("user@other.net", "user", True),
    ("USER@example.org", "user", True),             # strcasecmp on the user part
    ("other@example.org", "user", False),
    # "@domain": any user
    ("anyone@example.org", "@example.org", True),
    ("anyone@example.com", "@example.org", False),
    ("anyone", "@example.org", False),
    # "user@domain"
    ("user@example.org", "user@example.org", True),
    ("user@other.org", "user@example.org", False),
    ("other@example.org", "user@example.org", False),
    # "@": the catch-all
    ("x@y.z", "@", True),
    ("nobody", "@", True),
    # +tag: stripped from the subject unless the entry has one
    ("user+tag@example.org", "user@example.org", True),
    ("user+tag@example.org", "user", True),
    ("user+tag@example.org", "user+tag@example.org", True),
    ("user@example.org", "user+tag@example.org", False),
    ("user+other@example.org", "user+tag@example.org", False),
    # wildcard domain
    ("a@mx.example.org", "@*.example.org", True),
    ("a@example.org", "@*.example.org", False),
    ("a@mx.example.org", "a@*.example.org", True),
    ("b@mx.example.org", "a@*.example.org", False),
    # the last '@' splits (text_to_mailaddr uses strrchr)
    ("a@b@example.org", "@example.org", True),
    ("a@b@example.org", "a@b@example.org", True),
])
def test_mailaddr_match(subject: str, entry: str, expected: bool) -> None:
    assert mailaddr_match(subject, entry) is expected


@pytest.mark.parametrize(("subject", "entry", "expected"), [
    ("192.168.1.7", "192.168.1.0/24", True),
    ("192.168.2.7", "192.168.1.0/24", False),
    ("10.1.2.3", "10.0.0.0/8", True),
    ("11.1.2.3", "10.0.0.0/8", False),
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.2", "127.0.0.1", False),
    ("2001:db8::1", "2001:db8::/32", True),
    ("2001:db9::1", "2001:db8::/32", False),
    ("ipv6:2001:db8::1", "2001:db8::/32", True),     # "IPv6:" prefix (text_to_netaddr)
    ("2001:db8::1", "IPv6:2001:db8::/32", True),
    ("IPV6:2001:db8::1", "ipv6:2001:db8::/32", True),
    ("127.0.0.1", "::/0", False),                    # families differ
    ("::1", "0.0.0.0/0", False),
    ("local", "local", True),                        # strcasecmp first
    ("LOCAL", "local", True),
    ("local", "127.0.0.0/8", False),
    ("not-an-address", "10.0.0.0/8", False),
    ("10.0.0.1", "not-a-network", False),
])
def test_netaddr_match(subject: str, entry: str, expected: bool) -> None:
    assert netaddr_match(subject, entry) is expected


@pytest.mark.parametrize(("subject", "pattern", "expected"), [
    ("root@example.org", "^root@", True),
    ("root@example.org", "example", True),           # unanchored (regexec search)
    ("root@example.org", "^example", False),
    ("root@example.org", "org$", True),
    ("root@example.org", "(?i)ROOT@EXAMPLE", True),  # "(?i)" prefix = REG_ICASE
    ("root@example.org", "ROOT", False),             # case-sensitive otherwise
    ("xbarx", "foo|bar", True),                      # extended syntax
    ("ab", "^a(b|c)$", True),
    ("anything", "(", False),                        # regcomp failure = no match
    ("anything", "a[", False),
    # POSIX ERE from the C library, as smtpd uses (posix_regex.py), not Python's re:
    ("d@x", "^\\d@", True),                          # glibc: \d is a plain 'd'
    ("1@x", "^\\d@", False),
    ("abc", "^[[:alpha:]]+$", True),                 # POSIX classes
    ("ab1", "^[[:alpha:]]+$", False),
])
def test_regex_match(subject: str, pattern: str, expected: bool) -> None:
    assert EXACT, "glibc's regcomp() is expected on Debian"
    assert regex_match(subject, pattern) is expected


def test_matches_picks_the_matcher_of_the_service() -> None:
    assert matches(Service.DOMAIN, "mx.example.org", ["other.org", "*.example.org"])
    assert not matches(Service.DOMAIN, "example.org", ["*.example.org"])
    assert matches(Service.NETADDR, "10.1.2.3", ["192.168.0.0/16", "10.0.0.0/8"])
    assert matches(Service.MAILADDR, "user+tag@example.org", ["user@example.org"])
    assert matches(Service.REGEX, "root@example.org", ["^nobody", "^root@"])
    assert not matches(Service.REGEX, "root@example.org", ["^nobody"])


def test_matches_is_exact_for_other_services() -> None:
    # no wildcard, CIDR nor regex semantics for string/alias/...
    assert matches(Service.STRING, "alice", ["bob", "alice"])
    assert not matches(Service.STRING, "alice", ["*"])
    assert not matches(Service.STRING, "mx.example.org", ["*.example.org"])
    assert not matches(Service.ALIAS, "10.1.2.3", ["10.0.0.0/8"])
    assert not matches(Service.STRING, "alice", [])
