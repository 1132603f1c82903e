"""One static-table semantics, established against smtpd itself.

Real smtpd gets the same entries three times: as its own ``file:`` tables, as our
``MappingTable``, and as table-consul's replica of its embedded store (both built on
opensmtpd.table.static). The same SMTP traffic goes through each — from
several loopback sources, senders and recipients that hit every pattern service (netaddr
CIDR and classful forms, domain wildcards, every mailaddr form, POSIX regexes with
upper-case patterns) and the exact ones (alias, userinfo). smtpd's lookup trace
(``-T lookup``: every key, service and answer) and the SMTP replies must be identical.
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

from harness.smtpd import Root, free_port

from opensmtpd.consul.store import EmbeddedStore
from opensmtpd.install import launcher_source

from .backends import MAPPING

TABLES = {
    "srcs": "127.0.0.0/30\n127.0.1.1\n127.2\nlocal\n",
    "domains": "example.test\n*.wild.test\nUPPER.TEST\n",
    "mailfroms": "postmaster\n@corp.test\nboss@partner.test\ntag+x@partner.test\n@*.wild.test\n",
    "rcpts": "@example.test\nBob@upper.test\nsales+eu@upper.test\n",
    "regexes": "^ADMIN[0-9]*@\n^\\d+@\n(?i)^BOSS\n[[:digit:]]{3}@\n",
    "aliases": "root: alice\nWebmaster: bob\nlist: alice, bob\n",
    "users": "alice 65534:65534:{home}\nbob 65534:65534:{home}\n",
}
SOURCES = ("127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.1.1", "127.0.1.2", "127.2.3.4",
           "127.3.0.1")
SENDERS = ("postmaster@any.test", "someone@corp.test", "BOSS@partner.test",
           "boss+tag@partner.test", "tag+x@partner.test", "tag@partner.test",
           "a@mx.wild.test", "a@wild.test", "nobody@else.test")
RCPTS = ("a@example.test", "b@x.wild.test", "bob@upper.test", "BOB@UPPER.TEST",
         "bob+tag@upper.test", "sales+eu@upper.test", "sales@upper.test", "admin7@x.test",
         "ddd@x.test", "123@x.test", "boss@x.test", "x999@other.test", "root@local.test",
         "WEBMASTER@local.test", "list@local.test", "carol@local.test", "z@nowhere.test")
_TRACE = re.compile(r'lookup: (match|lookup) "(.*)" as (\w+) in table \w+:(\w+) -> (.*)$')


BACKENDS = {"file": {}, "pyos-static": {"pyos-static": MAPPING},
            "consul": {"consul": launcher_source("consul")}}


def _conf(port: int, sink: int, inside: str, backend: str) -> str:
    where = {"consul": lambda name: f"{inside}/table-consul.conf"}.get(
        backend, lambda name: f"{inside}/{name}")
    tables = "".join(f"table {name} {backend}:{where(name)}\n" for name in TABLES)
    return tables + f"""
listen on 127.0.0.1 port {port}
action "local" maildir "{inside}/maildir" alias <aliases> userbase <users>
action "out" relay host smtp://127.0.0.1:{sink}
match from src <srcs> for domain "local.test" action "local"
match from src <srcs> mail-from <mailfroms> for domain <domains> action "out"
match from src <srcs> for rcpt-to <rcpts> action "out"
match from src <srcs> for rcpt-to regex <regexes> action "out"
"""


def _traffic(port: int) -> list[tuple[str, str, int, int]]:
    """(source, what, MAIL code, RCPT code) for every combination, one session each
    source, RSET between transactions: nothing is queued."""
    outcomes = []
    for source in SOURCES:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30,
                          source_address=(source, 0)) as client:
            client.ehlo()
            for sender in SENDERS:
                mail, _ = client.mail(sender)
                rcpt, _ = client.rcpt("a@example.test") if mail == 250 else (0, b"")
                outcomes.append((source, sender, mail, rcpt))
                client.rset()
            for rcpt_to in RCPTS:
                mail, _ = client.mail("postmaster@any.test")
                code, _ = client.rcpt(rcpt_to) if mail == 250 else (0, b"")
                outcomes.append((source, rcpt_to, mail, code))
                client.rset()
    return outcomes


def _lookups(log: str) -> list[tuple[str, ...]]:
    return [m.groups() for line in log.splitlines() if (m := _TRACE.search(line))]


def _run(root: Root, smtpd, host: Path, inside: str, sink: int,  # type: ignore[no-untyped-def]
         backend: str) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, ...]]]:
    port = free_port()
    backends = BACKENDS[backend]
    server = smtpd(root, _conf(port, sink, inside, backend), backends)
    server.start(ready_tables=TABLES if backends else (), port=port)
    try:
        outcomes = _traffic(port)
        assert server.running(), server.log()
        return outcomes, _lookups(server.log())
    finally:
        server.stop()


def test_our_tables_answer_as_smtpd_file_tables(any_root: Root, workdir, smtpd,  # type: ignore[no-untyped-def]
                                                 sink) -> None:
    host, inside = workdir(any_root)
    for name, text in TABLES.items():
        (host / name).write_text(text.replace("{home}", f"{inside}/home"))
    (host / "maildir").mkdir()
    (host / "home").mkdir()
    store = EmbeddedStore(str(host / "kv.sqlite3"))  # the same entries, one key each
    for name in TABLES:
        for line in (host / name).read_text().splitlines():
            key, _, value = line.replace(": ", " ").partition(" ")
            store.put(f"{name}/{key}", value.encode())
    (host / "table-consul.conf").write_text(f"database = {inside}/kv.sqlite3\n"
                                            "key_layout = <table>/<key>\n")

    file_outcomes, file_lookups = _run(any_root, smtpd, host, inside, sink.port, "file")
    ours = {backend: _run(any_root, smtpd, host, inside, sink.port, backend)
            for backend in ("pyos-static", "consul")}

    # the traffic exercised every table, with both answers (or it proves nothing)
    answers = {(service, result != "false" and result != "none")
               for _, _, service, _, result in file_lookups}
    for service in ("NETADDR", "DOMAIN", "MAILADDR", "REGEX", "ALIAS", "USERINFO"):
        seen = {found for s, found in answers if s.upper() == service}
        assert seen == {True, False}, (service, sorted(answers))
    assert not [entry for entry in file_lookups if entry[4].startswith("error")]
    assert {code for *_, code in file_outcomes} >= {250, 550}
    # and ours answered everything exactly as smtpd's own tables did
    for backend, (outcomes, lookups) in ours.items():
        assert outcomes == file_outcomes, backend
        assert len(lookups) == len(file_lookups), backend
        for mine, theirs in zip(lookups, file_lookups, strict=True):
            assert mine == theirs, backend
