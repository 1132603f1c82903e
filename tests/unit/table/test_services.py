"""Services: wire codes (table-protocols.md §1.4), wire names (§3.2), value rules (§1.6)."""

from __future__ import annotations

import pytest

from opensmtpd.table.services import ALL_BUT_AUTH, InvalidValue, Service, validate_value

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
