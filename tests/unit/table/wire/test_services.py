"""Services: wire codes (table-protocols.md §1.4), wire names (§3.2), value rules (§1.6)."""

from __future__ import annotations

import pytest

from opensmtpd.table.wire.services import (
    ALL_BUT_AUTH,
    InvalidValue,
    Service,
    smtpd_parse_error,
    validate_value,
)

# enum table_service, smtpd-api.h @ smtpd-6.8; K_AUTH from 7.6 (commit 60ddc29b).
WIRE = [
    ("alias", 0x001), ("domain", 0x002), ("credentials", 0x004), ("netaddr", 0x008),
    ("userinfo", 0x010), ("source", 0x020), ("mailaddr", 0x040), ("addrname", 0x080),
    ("mailaddrmap", 0x100), ("relayhost", 0x200), ("string", 0x400), ("regex", 0x800),
    ("auth", 0x1000),
]


@pytest.mark.parametrize(("name", "code"), WIRE)
def test_wire_code_and_name(name: str, code: int) -> None:
    service = Service.from_name(name)
    assert service is not None
    assert service.code == code
    assert Service.from_code(code) is service
    assert service.value == name


def test_every_service_has_a_wire_code() -> None:
    assert {s.value for s in Service} == {name for name, _ in WIRE}


@pytest.mark.parametrize("code", [0x000, 0xfff, 0x3, 0x2000, 0x4000, -1])
def test_codes_that_are_no_single_service(code: int) -> None:
    # K_NONE, K_ANY, a combination, and bits past K_AUTH are not a service
    assert Service.from_code(code) is None


@pytest.mark.parametrize("name", ["none", "bogus", "ALIAS", "alias ", ""])
def test_names_smtpd_would_not_accept(name: str) -> None:
    assert Service.from_name(name) is None


def test_compares_and_hashes_like_its_wire_name() -> None:
    assert Service.ALIAS == "alias"  # type: ignore[comparison-overlap]
    assert Service.ALIAS != "domain"  # type: ignore[comparison-overlap]
    assert str(Service.MAILADDRMAP) == "mailaddrmap"
    assert f"{Service.DOMAIN}" == "domain"
    assert hash(Service.ALIAS) == hash("alias")
    assert {"alias": 1}[Service.ALIAS] == 1
    assert {Service.ALIAS: 1}["alias"] == 1  # type: ignore[index]
    assert Service.CREDENTIALS in {"credentials"}


def test_list_services() -> None:
    assert {s for s in Service if s.is_list} == {Service.ALIAS, Service.MAILADDRMAP}


def test_all_but_auth() -> None:
    assert Service.AUTH not in ALL_BUT_AUTH
    assert len(ALL_BUT_AUTH) == 12
    assert set(ALL_BUT_AUTH) | {Service.AUTH} == set(Service)


# --- validate_value ---------------------------------------------------------------

VALID = [
    (Service.USERINFO, "1000:1000:/home/alice"),
    (Service.USERINFO, "65534:65534:/var/empty"),
    (Service.SOURCE, "127.0.0.1"),
    (Service.SOURCE, "::1"),
    (Service.SOURCE, "ipv6:2001:db8::7"),
    (Service.SOURCE, "IPv6:2001:db8::7"),
    (Service.NETADDR, "192.168.1.7"),
    (Service.NETADDR, "10.0.0.0/8"),
    (Service.NETADDR, "2001:db8::/32"),
    (Service.NETADDR, "ipv6:2001:db8::/32"),
    (Service.ALIAS, "alice"),
    (Service.ALIAS, "alice, bob@example.org, /var/mail/x"),
    (Service.MAILADDRMAP, "alice@example.net, @alias.test"),
    (Service.DOMAIN, "example.org"),
    (Service.ADDRNAME, "names.probe.test"),
    (Service.CREDENTIALS, "alice:$2b$10$abcdefghijklmnopqrstuv"),
    (Service.MAILADDR, "gilles@poolp.org"),
    (Service.RELAYHOST, "smtp+tls://relay.example.org:587"),
]


@pytest.mark.parametrize(("service", "value"), VALID)
def test_values_smtpd_can_parse(service: Service, value: str) -> None:
    validate_value(service, value)  # does not raise


INVALID = [
    # userinfo is uid:gid:directory (to.c text_to_userinfo after smtpd prefixes "key:")
    (Service.USERINFO, "1000:1000"),
    (Service.USERINFO, "alice:1000:/home/alice"),
    (Service.USERINFO, "1000:x:/home/alice"),
    (Service.USERINFO, "1000:1000:home/alice"),
    (Service.USERINFO, "/home/alice"),
    # source: an address (parse_sockaddr), not a name nor a network
    (Service.SOURCE, "localhost"),
    (Service.SOURCE, "10.0.0.0/8"),
    (Service.SOURCE, "ipv6:"),
    # netaddr: address or CIDR
    (Service.NETADDR, "example.org"),
    (Service.NETADDR, "10.0.0.0/33"),
    (Service.NETADDR, "ipv6:2001:db8::/129"),
    # comma lists with an empty item
    (Service.ALIAS, "alice,,bob"),
    (Service.ALIAS, "alice, "),
    (Service.ALIAS, ",alice"),
    (Service.MAILADDRMAP, "a@example.org, , b@example.org"),
    # a domain longer than destination.name (HOST_NAME_MAX + 1)
    (Service.DOMAIN, "a" * 256),
]


@pytest.mark.parametrize(("service", "value"), INVALID)
def test_values_smtpd_cannot_parse(service: Service, value: str) -> None:
    with pytest.raises(InvalidValue):
        validate_value(service, value)


@pytest.mark.parametrize("service", list(Service))
def test_empty_value_is_invalid_for_every_service(service: Service) -> None:
    # native: "found|" with an empty value is fatal ("empty response", §3.4)
    with pytest.raises(InvalidValue):
        validate_value(service, "")


@pytest.mark.parametrize("service", list(Service))
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b", "trailing\n"])
def test_line_breaks_and_nul_are_invalid_for_every_service(service: Service, bad: str) -> None:
    # a newline would end the reply line; a NUL would cut the imsg string
    with pytest.raises(InvalidValue):
        validate_value(service, bad)


@pytest.mark.parametrize("service", [Service.ALIAS, Service.CREDENTIALS, Service.RELAYHOST,
                                     Service.MAILADDRMAP])
def test_length_limit_is_line_max_minus_one_bytes(service: Service) -> None:
    # values are parsed into LINE_MAX (2048) buffers: 2047 bytes + NUL is the most
    validate_value(service, "a" * 2047)
    with pytest.raises(InvalidValue):
        validate_value(service, "a" * 2048)


def test_length_is_counted_in_bytes_not_characters() -> None:
    validate_value(Service.ALIAS, "é" * 1023)  # 2046 bytes
    with pytest.raises(InvalidValue):
        validate_value(Service.ALIAS, "é" * 1024)  # 1024 characters, 2048 bytes
    raw = ("x" * 2046).encode() + b"\xff"  # a non-UTF-8 byte counts as one byte
    validate_value(Service.ALIAS, raw.decode("utf-8", "surrogateescape"))


def test_invalid_value_is_a_value_error() -> None:
    assert issubclass(InvalidValue, ValueError)


# --- smtpd_parse_error: only what table_parse_lookup certainly rejects -------------------

@pytest.mark.parametrize(("service", "key", "value"), [
    (Service.USERINFO, "root", "0:0:/root"),
    (Service.USERINFO, "root", "0:0:relative"),  # any directory: text_to_userinfo copies it
    (Service.USERINFO, "root", "0:0:"),
    (Service.USERINFO, "root", "+0: 0:/x"),  # strtonum: sign and leading space
    (Service.ALIAS, "root", "a, ,b,"),  # empty items are skipped
    (Service.ALIAS, "root", '"|/bin/x, y", \\,z'),
    (Service.MAILADDRMAP, "a", "b@example.org, 'c d'@example.org"),
    (Service.CREDENTIALS, "bob", "bob:$6$x"),
    (Service.CREDENTIALS, "bob", "$6$xyz"),  # no ':': the key is the user
    (Service.DOMAIN, "x", "a" * 64),
    (Service.SOURCE, None, "192.0.2.1"),
    (Service.SOURCE, None, "[ipv6:2001:db8::1]"),
    (Service.ADDRNAME, "192.0.2.1", "mx.example.org"),
    (Service.RELAYHOST, "x", "smtp+tls://mx.example.org:25"),
    (Service.NETADDR, "x", "10/8"),  # inet_net_pton takes it (Python would not)
    (Service.MAILADDR, "x", "weird address"),  # not judged here: validate_value's business
])
def test_smtpd_takes(service: Service, key: str | None, value: str) -> None:
    assert smtpd_parse_error(service, key, value) is None


@pytest.mark.parametrize(("service", "key", "value", "why"), [
    (Service.USERINFO, "root", "0:0", "not uid:gid:directory"),
    (Service.USERINFO, "root", "x:0:/root", "uid or gid"),
    (Service.USERINFO, "root", "0 :0:/root", "uid or gid"),  # strtonum: trailing space
    (Service.USERINFO, "root", "-1:0:/root", "uid or gid"),
    (Service.USERINFO, "root", f"{2**32}:0:/root", "uid or gid"),
    (Service.USERINFO, "r" * 2000, "0:0:/" + "d" * 50, "2048 bytes or more"),
    (Service.ALIAS, "root", '"a, b', "unbalanced"),
    (Service.ALIAS, "root", "a\\", "trailing backslash"),
    (Service.ALIAS, "root", "a" * 2048, "2048 bytes"),
    (Service.MAILADDRMAP, "a", "x, " + "b" * 2048, "too long"),
    (Service.CREDENTIALS, "bob", "ab", "shorter than 3"),
    (Service.CREDENTIALS, "bob", ":secret", "empty user or password"),
    (Service.CREDENTIALS, "bob", "bob:", "empty user or password"),
    (Service.DOMAIN, "x", "a" * 65, "longer than 64"),
    (Service.SOURCE, None, "mx.example.org", "not an IP address"),
    (Service.ADDRNAME, "not-an-address", "mx.example.org", "key is not an address"),
    (Service.RELAYHOST, "x", "r" * 2048, "2048 bytes"),
    (Service.ALIAS, "root", "a\nb", "newline"),
    (Service.STRING, "x", "", "empty"),
])
def test_smtpd_rejects(service: Service, key: str | None, value: str, why: str) -> None:
    error = smtpd_parse_error(service, key, value)
    assert error is not None and why in error
