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


# --- what smtpd itself rejects (table.c table_parse_lookup, the same in 6.8 and 7.9) ---

HOST_NAME_MAX = 64  # glibc's: struct destination and addrname names on Linux (255 on OpenBSD)
ID_MAX = 2**32 - 1  # UID_MAX, GID_MAX (openbsd-compat: UINT_MAX)
_SPACE = b" \t\n\v\f\r"


def _line_split_fails(value: bytes) -> bool:
    """expand_line_split / mailaddr_line_split: an unbalanced quote, a trailing backslash
    or an item of LINE_MAX bytes makes smtpd reject the whole list."""
    esc = dq = sq = False
    size = 0
    for byte in value:
        if size >= LINE_MAX:
            return True
        if esc:
            size, esc = size + 1, False
        elif byte == 0x5C:  # backslash
            esc = True
        elif byte == 0x2C and not (dq or sq):  # an unquoted comma ends the item
            size = 0
        else:
            size += 1
            dq ^= byte == 0x22 and not sq
            sq ^= byte == 0x27 and not dq
    return esc or dq or sq or size >= LINE_MAX


def _strtonum_fails(text: bytes, maximum: int) -> bool:
    digits = text.lstrip(_SPACE)
    digits = digits[1:] if digits[:1] in (b"+", b"-") else digits
    if not digits.isdigit():
        return True
    return not 0 <= int(text.strip(_SPACE)) <= maximum


def _sockaddr_fails(text: str) -> bool:
    """parse_sockaddr(PF_UNSPEC): an IPv4 address, or IPv6 with an optional '[', 'ipv6:'
    and ']' (a %scope suffix is given the benefit of the doubt)."""
    try:
        ipaddress.IPv4Address(text)
        return False
    except ValueError:
        pass
    text = text[1:] if text.startswith("[") else text
    text = text[5:] if text[:5].lower() == "ipv6:" else text
    text = text.partition("]")[0].partition("%")[0]
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return True
    return False


def smtpd_parse_error(service: Service, key: str | None, value: str) -> str | None:
    """Why smtpd would fail to parse ``value``, found for ``key``, into ``service``'s
    result (the lookup then becomes -1, a tempfail), or None when it would not.

    Only what smtpd certainly rejects; ``validate_value`` is the library's stricter rule
    (a relative home directory or an empty list item, which smtpd takes)."""
    raw = value.encode("utf-8", "surrogateescape")
    if not raw:
        return "empty value"
    if b"\0" in raw or b"\n" in raw:
        return "value contains a NUL byte or a newline"
    if service in (Service.ALIAS, Service.MAILADDRMAP):
        if service is Service.ALIAS and len(raw) >= LINE_MAX:
            return f"alias value of {LINE_MAX} bytes or more"
        if _line_split_fails(raw):
            return "unbalanced quote, trailing backslash or an item too long"
    elif service is Service.CREDENTIALS:
        if not 3 <= len(raw) < LINE_MAX:
            return f"credentials value shorter than 3 or of {LINE_MAX} bytes or more"
        if raw.startswith(b":") or raw.endswith(b":"):
            return "credentials value with an empty user or password around ':'"
    elif service in (Service.DOMAIN, Service.ADDRNAME):
        if len(raw) > HOST_NAME_MAX:
            return f"{service} value longer than {HOST_NAME_MAX} bytes"
        if service is Service.ADDRNAME and key is not None and _sockaddr_fails(key):
            return "addrname key is not an address"
    elif service is Service.RELAYHOST and len(raw) >= LINE_MAX:
        return f"relayhost value of {LINE_MAX} bytes or more"
    elif service is Service.SOURCE and _sockaddr_fails(value):
        return "source value is not an IP address"
    elif service is Service.USERINFO and key is not None:
        return _userinfo_error(key.encode("utf-8", "surrogateescape") + b":" + raw)
    return None


def _userinfo_error(line: bytes) -> str | None:
    """text_to_userinfo on "key:value" (smtpd prefixes the key): user:uid:gid:directory."""
    if len(line) >= LINE_MAX:
        return f"userinfo key:value of {LINE_MAX} bytes or more"
    fields = line.split(b":", 3)
    if len(fields) < 4:
        return "userinfo value is not uid:gid:directory"
    if _strtonum_fails(fields[1], ID_MAX) or _strtonum_fails(fields[2], ID_MAX):
        return "userinfo uid or gid is not a number smtpd accepts"
    return None
