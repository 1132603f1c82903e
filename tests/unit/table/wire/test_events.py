"""wire/events.py: the log-safe description of a request, the send-events."""

from __future__ import annotations

from opensmtpd.table.wire.events import Answer, Error, Op, Request
from opensmtpd.table.wire.services import Service

PASSWORD = "s3cret-hunter2"


def req(op: Op, service: Service | None = None, key: str | None = None) -> Request:
    return Request(op, "0000000a", "t", service, key, service.value if service else "")


def test_describe_hides_auth_passwords_but_not_other_keys() -> None:
    shown = req(Op.CHECK, Service.AUTH, f"alice:{PASSWORD}").describe()
    assert "alice" in shown and PASSWORD not in shown
    assert "root" in req(Op.LOOKUP, Service.ALIAS, "root").describe()
    assert req(Op.UPDATE).describe() == "update"


def test_describe_names_an_unknown_service_by_its_wire_form() -> None:
    request = Request(Op.LOOKUP, "1", "t", None, "root", "0x4000")
    assert request.describe() == "lookup 0x4000 'root'"


def test_describe_bounds_a_long_key() -> None:
    assert len(req(Op.LOOKUP, Service.ALIAS, "k" * 5000).describe()) < 200


def test_an_answer_is_its_fields() -> None:
    answer = Answer(Op.LOOKUP, "0000000a", Error("down"))
    assert (answer.op, answer.id, answer.reply) == (Op.LOOKUP, "0000000a", Error("down"))
    assert answer == Answer(Op.LOOKUP, "0000000a", Error("down"))
