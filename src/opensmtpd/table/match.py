"""CHECK semantics of smtpd's own static tables, for backends that answer checks.

A proc backend receives the raw (lower-cased) subject and must match it itself
(table-protocols.md §1.6). These follow table.c / mailaddr.c / util.c of smtpd:
``subject`` comes from the session, ``entry`` from the table.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from ._posix_regex import Regex
from .wire.services import Service

SUBADDRESSING_DELIM = "+"
MAX_ADDRESS = 2047  # text_to_mailaddr(): the address into char[LINE_MAX]
MAX_PART = 255  # SMTPD_MAXLOCALPARTSIZE / SMTPD_MAXDOMAINPARTSIZE, minus the NUL
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def ascii_lower(text: str) -> str:
    """smtpd's lowercase(): tolower() byte by byte in the C locale, ASCII letters only."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def domain_match(subject: str, pattern: str) -> bool:
    """hostname_match(): case-insensitive, ``*`` skips up to the next pattern character.

    No backtracking, exactly like smtpd: ``*.example.org`` matches ``mx.example.org``
    but neither ``example.org`` nor ``a.b.example.org``.
    """
    s, p = ascii_lower(subject), ascii_lower(pattern)
    i = j = 0
    while j < len(p) and i < len(s):
        if p[j] == "*":
            while j < len(p) and p[j] == "*":
                j += 1
            nxt = p[j] if j < len(p) else ""
            while i < len(s) and s[i] != nxt:
                i += 1
            continue
        if p[j] != s[i]:
            return False
        i += 1
        j += 1
    return i == len(s) and j == len(p)


def split_mailaddr(text: str) -> tuple[str, str] | None:
    """text_to_mailaddr(): (user, domain) split at the last ``@``; None where smtpd fails
    (a part longer than its buffer)."""
    user, at, domain = text.rpartition("@")
    if not at:
        user, domain = text, ""
    if len(text) > MAX_ADDRESS or len(user) > MAX_PART or len(domain) > MAX_PART:
        return None
    return user, domain


def mailaddr_match(subject: str, entry: str) -> bool:
    """mailaddr_match(): ``user``, ``@domain``, ``user@domain``, ``@`` (catch-all).

    The domain part may use ``*`` wildcards; a ``+tag`` on the subject is ignored
    unless the entry has one too.
    """
    subject_parts, entry_parts = split_mailaddr(subject), split_mailaddr(entry)
    if subject_parts is None or entry_parts is None:
        return False
    s_user, s_domain = subject_parts
    e_user, e_domain = entry_parts
    if not e_user and not e_domain:
        return True
    if e_domain and not domain_match(s_domain, e_domain):
        return False
    if e_user:
        if SUBADDRESSING_DELIM not in e_user:
            s_user = s_user.split(SUBADDRESSING_DELIM, 1)[0]
        if ascii_lower(s_user) != ascii_lower(e_user):
            return False
    return True


def _inet_net_pton4(text: str) -> tuple[int, int] | None:
    """inet_net_pton(AF_INET): 1 to 4 decimal octets, ``/bits`` or a class-derived
    width widened to the octets given (``10.1`` is 10.1.0.0/16)."""
    address, slash, width = text.partition("/")
    octets = address.split(".")
    if not 1 <= len(octets) <= 4 or not all(o.isdigit() and o.isascii() and len(o) <= 3
                                             and int(o) < 256 for o in octets):
        return None
    value = 0
    for octet in (*octets, *("0",) * (4 - len(octets))):
        value = value << 8 | int(octet)
    if slash:
        if not (width.isdigit() and width.isascii() and int(width) <= 32):
            return None
        return value, int(width)
    first = int(octets[0])
    bits = 32 if first >= 240 else 8 if first >= 224 else 24 if first >= 192 else (
        16 if first >= 128 else 8)
    bits = max(bits, 8 * len(octets))
    if bits == 8 and first == 224:
        bits = 4
    return value, bits


@functools.lru_cache(maxsize=4096)
def parse_netaddr(text: str) -> tuple[int, int, int] | None:
    """text_to_netaddr(): (IP version, address as an int, prefix length), or None.

    An ``IPv6:`` prefix and ``[…]`` brackets are accepted; an IPv6 address without
    ``/bits`` is a /128.
    """
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    v4 = _inet_net_pton4(text)
    if v4 is not None:
        return 4, v4[0], v4[1]
    if text[:1] == "[":
        text = text[1:]
        if text[:5].lower() == "ipv6:":
            text = text[5:]
        if not text.endswith("]"):
            return None
        text = text[:-1]
    address, slash, width = text.partition("/")
    if "%" in address:  # a scope id: Python takes it, inet_pton() does not
        return None
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return None
    if slash and not (width.isdigit() and width.isascii() and int(width) <= 128):
        return None
    return 6, int(ip), int(width) if slash else 128


def netaddr_match(subject: str, entry: str) -> bool:
    """table_netaddr_match(): equal strings (e.g. ``local``), else the subject's address
    inside the entry's network (same family)."""
    if ascii_lower(subject) == ascii_lower(entry):
        return True
    address, network = parse_netaddr(subject), parse_netaddr(entry)
    if address is None or network is None or address[0] != network[0]:
        return False
    shift = (32 if network[0] == 4 else 128) - network[2]
    return address[1] >> shift == network[1] >> shift


_REGEXES: dict[str, Regex | None] = {}
MAX_REGEXES = 4096  # compiled patterns kept; the cache is emptied past it


def _regex(pattern: str) -> Regex | None:
    compiled = _REGEXES.get(pattern)
    if compiled is None and pattern not in _REGEXES:
        ignore_case = pattern.startswith("(?i)")
        try:
            compiled = Regex(pattern[4:] if ignore_case else pattern, ignore_case)
        except ValueError:
            compiled = None  # regcomp() failure: smtpd treats it as no match
        if len(_REGEXES) >= MAX_REGEXES:
            _REGEXES.clear()
        _REGEXES[pattern] = compiled
    return compiled


def regex_match(subject: str, pattern: str) -> bool:
    """table_regex_match(): regexec() of the POSIX extended ``pattern`` (unanchored);
    a ``(?i)`` prefix ignores case. The C library's own regex where it can (posix_regex)."""
    compiled = _regex(pattern)
    return compiled is not None and compiled.search(subject)


def exact_match(subject: str, entry: str) -> bool:
    return ascii_lower(subject) == ascii_lower(entry)


MATCHERS = {
    Service.DOMAIN: domain_match,
    Service.NETADDR: netaddr_match,
    Service.MAILADDR: mailaddr_match,
    Service.REGEX: regex_match,
}


def matches(service: Service, subject: str, entries: Iterable[str]) -> bool:
    """True if ``subject`` matches any entry the way smtpd's static tables check ``service``."""
    match = MATCHERS.get(service, exact_match)
    return any(match(subject, entry) for entry in entries)
