"""Lookup services: wire numbers (imsg), wire names (7.6+), and the value rules smtpd applies.

Reference: shared/reference/table-protocols.md §1.4 (enum table_service) and §1.6
(table_parse_lookup: what smtpd can parse per service).
"""

from __future__ import annotations

import enum
import ipaddress

# smtpd parses looked-up values into fixed LINE_MAX (2048) buffers (expand_line,
# credentials, relayhost...): a longer value becomes a lookup error in smtpd.
LINE_MAX = 2048


class Service(str, enum.Enum):
    """A lookup service. Compares equal to its lower-case wire name (``service == "alias"``)."""

    ALIAS = "alias"
    DOMAIN = "domain"
    CREDENTIALS = "credentials"
    NETADDR = "netaddr"
    USERINFO = "userinfo"
    SOURCE = "source"
    MAILADDR = "mailaddr"
    ADDRNAME = "addrname"
    MAILADDRMAP = "mailaddrmap"
    RELAYHOST = "relayhost"
    STRING = "string"
    REGEX = "regex"
    AUTH = "auth"  # smtpd >= 7.6 only

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__

    @property
    def code(self) -> int:
        """The K_* bit smtpd <= 7.5 puts on the imsg wire."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Service | None:
        return _BY_CODE.get(code)

    @classmethod
    def from_name(cls, name: str) -> Service | None:
        return _BY_NAME.get(name)

    @property
    def is_list(self) -> bool:
        """Services whose value is a comma-separated list (aliases(5) / mailaddr lines)."""
        return self in (Service.ALIAS, Service.MAILADDRMAP)


_CODES = {s: 1 << i for i, s in enumerate(Service)}
_BY_CODE = {v: k for k, v in _CODES.items()}
_BY_NAME = {s.value: s for s in Service}

# The services the 2020 module API registers with smtpd >= 7.6: all but auth, since
# registering auth makes smtpd send `check|auth|user:password` instead of credentials
# lookups (lab-7.6 REPORT §2.4).
ALL_BUT_AUTH = tuple(s for s in Service if s is not Service.AUTH)


class InvalidValue(ValueError):
    """A value smtpd could not parse for its service."""


def _is_ip(text: str) -> bool:
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_netaddr(text: str) -> bool:
    """An address or CIDR network as text_to_netaddr() reads it (``ipv6:`` prefix allowed)."""
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _is_hostname(text: str) -> bool:
    return len(text) < 256 and not any(c.isspace() or c in ",|" for c in text)


def _check_userinfo(value: str) -> None:
    parts = value.split(":", 2)
    if len(parts) != 3:
        raise InvalidValue(f"userinfo must be uid:gid:directory, got {len(parts)} field(s)")
    uid, gid, home = parts
    if not (uid.isdigit() and gid.isdigit()):
        raise InvalidValue("userinfo uid and gid must be decimal numbers")
    if not home.startswith("/"):
        raise InvalidValue("userinfo directory must be an absolute path")


def _check_list(value: str) -> None:
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise InvalidValue("empty item in comma-separated list")


def validate_value(service: Service, value: str) -> None:
    """Raise InvalidValue if smtpd would fail to parse ``value`` for ``service``."""
    if not value:
        raise InvalidValue("empty value")
    if "\n" in value or "\r" in value or "\0" in value:
        raise InvalidValue("value contains a newline or NUL byte")
    if service in (Service.STRING, Service.REGEX, Service.AUTH):
        return  # smtpd never parses a value for these (check only)
    if len(value.encode("utf-8", "surrogateescape")) >= LINE_MAX:
        raise InvalidValue(f"value longer than {LINE_MAX - 1} bytes")
    if service is Service.USERINFO:
        _check_userinfo(value)
    elif service in (Service.SOURCE,) and not _is_ip(value):
        raise InvalidValue(f"{service} value must be an IP address")
    elif service is Service.NETADDR and not is_netaddr(value):
        raise InvalidValue("netaddr value must be an address or CIDR network")
    elif service in (Service.DOMAIN, Service.ADDRNAME) and not _is_hostname(value):
        raise InvalidValue(f"{service} value must be a host name")
    elif service.is_list:
        _check_list(value)
    elif service is Service.MAILADDR and any(c.isspace() for c in value):
        raise InvalidValue("mailaddr value contains white space")
