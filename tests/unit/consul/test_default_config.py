"""Issue 13 finding 8: ``table-consul kv`` and ``table NAME consul`` (no config argument)
use the same store by the same rule: /etc/mail/table-consul.conf when it exists, else the
defaults (docs/table-consul.md, table-consul(5))."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.smtpd import wait_for

from opensmtpd.consul import backend
from opensmtpd.consul import main as consul_main
from opensmtpd.consul.backend import ConsulTable
from opensmtpd.table import Found, Op, Request, Service, Table


class _Served:
    def __init__(self, tables: list[Table], table: Table) -> None:
        tables.append(table)

    def run(self) -> None:  # smtpd's side is not needed: the table is asked in process
        pass


@pytest.mark.parametrize("default_exists", [True, False])
def test_kv_and_the_table_use_one_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        default_exists: bool) -> None:
    default = tmp_path / "table-consul.conf"
    database = tmp_path / "kv.sqlite3"
    if default_exists:
        default.write_text(f"database = {database}\npoll_interval = 20ms\n")
    monkeypatch.setattr(consul_main, "DEFAULT_CONFIG", str(default))
    tables: list[Table] = []
    real = backend.build_table
    monkeypatch.setattr(backend, "build_table",
                        lambda path: _Served(tables, real(path)))  # type: ignore[arg-type,return-value]
    consul_main.serve(None)  # as smtpd runs 'table aliases consul': no argument
    (table,) = tables
    assert isinstance(table, ConsulTable), table
    try:
        kv = consul_main._KV(consul_main.load(consul_main._default_config()))
        assert kv.config.database == table.config.database
        assert (table.config.database == str(database)) is default_exists
        if not default_exists:
            return  # the embedded default /var/lib/table-consul: not written by a unit test
        assert consul_main.main(["kv", "put", "aliases/alias/root", "gilles"]) == 0
        lookup = Request(Op.LOOKUP, "1", "aliases", Service.ALIAS, "root", "alias")
        assert wait_for(lambda: table.answer(lookup) == Found("gilles"), 10)
    finally:
        table.close()
