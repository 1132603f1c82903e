"""MappingTable and smtpd's file: table format (table(5), table_static.c)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opensmtpd.table import MappingTable
from opensmtpd.table._mapping import TableFileError, parse_file
from opensmtpd.table.wire.events import Error, Found, NotFound, Op, Request, Updated
from opensmtpd.table.wire.services import Service


def req(op: Op, service: Service | None = None, key: str | None = None) -> Request:
    return Request(op, "0000000a", "t", service, key, service.value if service else "")


def ask(table: MappingTable, op: Op, service: Service | None = None,
        key: str | None = None) -> Any:
    return table.answer(req(op, service, key))


def write(tmp_path: Path, text: str, name: str = "table") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- parse_file -----------------------------------------------------------------------

def test_mapping_file_formats(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "# aliases\n"
        "\n"
        "root        gilles@poolp.org\n"
        "postmaster: root\n"
        "abuse:root\n"
        "list\talice@example.org, bob@example.org\n"
        "   indented   value with  spaces   \n"
        "# trailing comment\n"
    ))
    assert parse_file(path) == {
        "root": "gilles@poolp.org",
        "postmaster": "root",
        "abuse": "root",
        "list": "alice@example.org, bob@example.org",
        "indented": "value with  spaces",
    }


def test_list_file(tmp_path: Path) -> None:
    path = write(tmp_path, "# domains\nexample.org\n\n  example.net  \n*.example.com\n")
    assert parse_file(path) == {"example.org": None, "example.net": None,
                                "*.example.com": None}


def test_keys_are_lower_cased_values_are_not(tmp_path: Path) -> None:
    path = write(tmp_path, "ROOT Gilles@Poolp.org\nExample.ORG: X\n")
    assert parse_file(path) == {"root": "Gilles@Poolp.org", "example.org": "X"}


@pytest.mark.parametrize(("text", "line"), [
    ("root gilles@poolp.org\nexample.org\n", 2),         # list entry in a mapping table
    ("# c\nroot: gilles\n\nx\n", 4),
    ("[::1 a\n", 1),                                      # '[' without ']'
])
def test_mixed_file_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TableFileError) as caught:
        parse_file(path)
    assert f"{path}:{line}" in str(caught.value)


def test_a_list_table_takes_whole_lines_as_smtpd_does(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # parse_table_line(): the first entry makes it a list; every line is then one key,
    # separators and brackets included (regex lists: "[[:digit:]]{3}@")
    path = write(tmp_path, "# c\nexample.org\n\n[[:digit:]]{3}@\nroot: gilles\n")
    caplog.set_level(logging.WARNING, logger="opensmtpd")  # another test may have raised it
    assert parse_file(path) == {"example.org": None, "[[:digit:]]{3}@": None,
                                "root: gilles": None}
    assert f"{path}:5" in caplog.text
    forced = write(tmp_path, "# @list\nroot gilles\n", "forced")
    assert parse_file(forced) == {"root gilles": None}


def test_bracketed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "[::1] local6\n[IPv6:::2]:other\n")
    assert parse_file(path) == {"[::1]": "local6", "[ipv6:::2]": "other"}


def test_empty_file_is_an_empty_table(tmp_path: Path) -> None:
    assert parse_file(write(tmp_path, "# nothing\n\n")) == {}


def test_missing_file_raises_in_parse_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        parse_file(tmp_path / "absent")


# --- MappingTable ---------------------------------------------------------------------

def test_lookup_from_a_mapping() -> None:
    table = MappingTable({"ROOT": "gilles@poolp.org", "list": "a@x.org, b@x.org"})
    assert ask(table, Op.LOOKUP, Service.ALIAS, "root") == Found("gilles@poolp.org")
    assert ask(table, Op.LOOKUP, Service.ALIAS, "list") == Found("a@x.org, b@x.org")
    assert ask(table, Op.LOOKUP, Service.ALIAS, "nobody") == NotFound()


def test_lookup_of_a_list_entry_is_not_found() -> None:
    table = MappingTable(["example.org"])
    assert ask(table, Op.LOOKUP, Service.DOMAIN, "example.org") == NotFound()


def test_check_uses_smtpd_matching() -> None:
    table = MappingTable(["*.example.org", "10.0.0.0/8", "@example.net", "local",
                          "exact.example"])
    assert ask(table, Op.CHECK, Service.DOMAIN, "mx.example.org") == Found()
    assert ask(table, Op.CHECK, Service.DOMAIN, "example.org") == NotFound()
    assert ask(table, Op.CHECK, Service.DOMAIN, "a.b.example.org") == NotFound()
    assert ask(table, Op.CHECK, Service.DOMAIN, "exact.example") == Found()
    assert ask(table, Op.CHECK, Service.NETADDR, "10.1.2.3") == Found()
    assert ask(table, Op.CHECK, Service.NETADDR, "11.1.2.3") == NotFound()
    assert ask(table, Op.CHECK, Service.NETADDR, "local") == Found()
    assert ask(table, Op.CHECK, Service.MAILADDR, "anyone@example.net") == Found()
    assert ask(table, Op.CHECK, Service.MAILADDR, "anyone@example.com") == NotFound()


def test_check_of_a_mapping_matches_keys() -> None:
    table = MappingTable({"alice": "x", "*.example.org": "y"})
    assert ask(table, Op.CHECK, Service.STRING, "alice") == Found()
    assert ask(table, Op.CHECK, Service.STRING, "bob") == NotFound()
    assert ask(table, Op.CHECK, Service.DOMAIN, "mx.example.org") == Found()


def test_check_regex_entries() -> None:
    table = MappingTable(["^root@", "(?i)^POSTMASTER@"])
    assert ask(table, Op.CHECK, Service.REGEX, "root@example.org") == Found()
    assert ask(table, Op.CHECK, Service.REGEX, "postmaster@example.org") == Found()
    assert ask(table, Op.CHECK, Service.REGEX, "alice@example.org") == NotFound()


def test_fetch_rotates_over_the_keys() -> None:
    table = MappingTable(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    got = [ask(table, Op.FETCH, Service.SOURCE) for _ in range(4)]
    assert got == [Found("127.0.0.1"), Found("127.0.0.2"), Found("127.0.0.3"),
                   Found("127.0.0.1")]


def test_fetch_from_an_empty_table_is_not_found() -> None:
    assert ask(MappingTable([]), Op.FETCH, Service.SOURCE) == NotFound()


def test_values_are_still_validated() -> None:
    table = MappingTable({"alice": "not-userinfo"})
    assert isinstance(ask(table, Op.LOOKUP, Service.USERINFO, "alice"), Error)


def test_update_re_reads_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "root gilles@poolp.org\n")
    table = MappingTable(path=path)
    assert ask(table, Op.LOOKUP, Service.ALIAS, "root") == Found("gilles@poolp.org")
    assert ask(table, Op.LOOKUP, Service.ALIAS, "abuse") == NotFound()
    path.write_text("root eric@poolp.org\nabuse: root\n")
    assert ask(table, Op.LOOKUP, Service.ALIAS, "root") == Found("gilles@poolp.org")  # cached
    assert ask(table, Op.UPDATE) == Updated()
    assert ask(table, Op.LOOKUP, Service.ALIAS, "root") == Found("eric@poolp.org")
    assert ask(table, Op.LOOKUP, Service.ALIAS, "abuse") == Found("root")


def test_failed_reload_is_an_error_and_keeps_the_old_entries(tmp_path: Path) -> None:
    path = write(tmp_path, "root gilles@poolp.org\n")
    table = MappingTable(path=path)
    path.write_text("root gilles@poolp.org\nlonely\n")
    assert isinstance(ask(table, Op.UPDATE), Error)
    assert ask(table, Op.LOOKUP, Service.ALIAS, "root") == Found("gilles@poolp.org")


def test_bad_file_at_start_is_an_error_table_not_an_exit(tmp_path: Path) -> None:
    # an exception here would end the process, and smtpd (6.8 exits with its tables)
    path = write(tmp_path, "a b\nc\n")
    table = MappingTable(path=path)
    reply = ask(table, Op.LOOKUP, Service.ALIAS, "a")
    assert isinstance(reply, Error) and f"{path}:2" in reply.reason
    assert isinstance(ask(MappingTable(path=tmp_path / "missing"), Op.CHECK, Service.DOMAIN,
                          "x"), Error)
    path.write_text("a b\n")
    assert ask(table, Op.UPDATE) == Updated()
    assert ask(table, Op.LOOKUP, Service.ALIAS, "a") == Found("b")


def test_data_or_path_not_both() -> None:
    with pytest.raises(ValueError):
        MappingTable()
    with pytest.raises(ValueError):
        MappingTable({"a": "b"}, path="/nonexistent")


def test_services_can_be_restricted() -> None:
    table = MappingTable({"root": "x@example.org"}, services=["alias"])
    assert table.services == (Service.ALIAS,)
    assert ask(table, Op.LOOKUP, Service.ALIAS, "root") == Found("x@example.org")
    assert isinstance(ask(table, Op.LOOKUP, Service.DOMAIN, "root"), Error)


def test_default_serves_every_service_but_auth() -> None:
    table = MappingTable({"a": "b"})
    assert Service.AUTH not in table.services
    assert len(table.services) == 12


def test_a_bad_file_is_logged_through_the_library_logging_before_run(tmp_path: Path) -> None:
    """Logged at construction, before run(): it must go through the library's handler (to
    syslog when smtpd gives /dev/null as stderr), not Python's last-resort stderr print."""
    code = ("from opensmtpd.table import MappingTable\n"
            f"MappingTable(path={str(tmp_path / 'missing')!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert "cannot load the table file" in done.stderr
    # the library's format (label[pid]: message), which only its own handler writes
    assert re.search(r"\[\d+\]: cannot load the table file", done.stderr), done.stderr
