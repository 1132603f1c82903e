"""CHECK semantics of smtpd's own static tables, for backends that answer checks.

A proc backend receives the raw (lower-cased) subject and must match it itself
(table-protocols.md §1.6). These follow table.c / mailaddr.c / util.c of smtpd:
``subject`` comes from the session, ``entry`` from the table.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

from .services import Service

SUBADDRESSING_DELIM = "+"


def domain_match(subject: str, pattern: str) -> bool:
    """hostname_match(): case-insensitive, ``*`` skips up to the next pattern character.

    No backtracking, exactly like smtpd: ``*.example.org`` matches ``mx.example.org``
    but neither ``example.org`` nor ``a.b.example.org``.
    """
    s, p = subject.lower(), pattern.lower()
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


def _split_mailaddr(text: str) -> tuple[str, str]:
    # text_to_mailaddr(): the last '@' separates user and domain
    user, at, domain = text.rpartition("@")
    if not at:
        return text, ""
    return user, domain


def mailaddr_match(subject: str, entry: str) -> bool:
    """mailaddr_match(): ``user``, ``@domain``, ``user@domain``, ``@`` (catch-all).

    The domain part may use ``*`` wildcards; a ``+tag`` on the subject is ignored
    unless the entry has one too.
    """
    s_user, s_domain = _split_mailaddr(subject)
    e_user, e_domain = _split_mailaddr(entry)
    if not e_user and not e_domain:
        return True
    if e_domain and not domain_match(s_domain, e_domain):
        return False
    if e_user:
        if SUBADDRESSING_DELIM not in e_user:
            s_user = s_user.split(SUBADDRESSING_DELIM, 1)[0]
        if s_user.lower() != e_user.lower():
            return False
    return True


@functools.lru_cache(maxsize=4096)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def netaddr_match(subject: str, entry: str) -> bool:
    """table_netaddr_match(): equal strings (e.g. ``local``), else CIDR containment."""
    if subject.lower() == entry.lower():
        return True
    address, network = _network(subject), _network(entry)
    if address is None or network is None or address.version != network.version:
        return False
    return address.num_addresses == 1 and address.network_address in network


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str] | None:
    flags = 0
    if pattern.startswith("(?i)"):
        flags, pattern = re.IGNORECASE, pattern[4:]
    try:
        return re.compile(pattern, flags)
    except re.error:
        return None  # regcomp() failure: smtpd treats it as no match


def regex_match(subject: str, pattern: str) -> bool:
    """table_regex_match(): unanchored extended regex search, ``(?i)`` prefix ignores case."""
    compiled = _regex(pattern)
    return compiled is not None and compiled.search(subject) is not None


def exact_match(subject: str, entry: str) -> bool:
    return subject.lower() == entry.lower()


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
