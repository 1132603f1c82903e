"""What of a request or a child's line reaches smtpd's log (logsafe.py): never a
password, never a found value (DESIGN.md invariant 3)."""

from __future__ import annotations

from opensmtpd.procexec.logsafe import SHOWN, shown
from opensmtpd.table.wire.events import Op, Request
from opensmtpd.table.wire.services import Service


def test_found_values_are_hidden_in_logs() -> None:
    assert "s3cret" not in shown("lookup-result|1|found|bob:s3cret")
    assert "s3cret" not in shown("table-response|1|found|bob:s3cret")
    assert "garbage" in shown("garbage")


def test_shown_lines_are_bounded_and_quoted() -> None:
    line = shown("x" * 1000)
    assert line == repr("x" * SHOWN + "…")
    assert shown("a|b") == "'a|b'"


def test_an_auth_password_is_never_described() -> None:
    request = Request(Op.CHECK, "1", "users", Service.AUTH, "alice:s3cret")
    assert request.describe() == "check auth 'alice':<password>"


def test_requests_are_described_with_a_bounded_key() -> None:
    assert Request(Op.LOOKUP, "1", "t", Service.ALIAS, "root").describe() == "lookup alias 'root'"
    assert Request(Op.UPDATE, "1", "t").describe() == "update"
    assert Request(Op.LOOKUP, "1", "t", None, "k", raw_service="0x4000").describe() == \
        "lookup 0x4000 'k'"
    long = Request(Op.LOOKUP, "1", "t", Service.ALIAS, "k" * 500).describe()
    assert long == f"lookup alias {'k' * 128!r}"
