"""wire/__init__.py: which generation smtpd speaks, from its first bytes."""

from __future__ import annotations

import pytest

from opensmtpd.table.wire import PROTOCOLS, detect, imsg
from opensmtpd.table.wire.events import Op
from opensmtpd.table.wire.services import Service


def test_the_three_generations() -> None:
    assert PROTOCOLS == ("native", "imsg", "2020")


@pytest.mark.parametrize(("prefix", "expected"), [
    (b"config|smtpd-version|7.6.0-portable\n", "native"),
    (b"config|", "native"),
    (b"table|0.1|1590480000.000000|lookup|", "2020"),
    (imsg.open_request("t"), "imsg"),
    (imsg.open_request("t")[:4], "imsg"),
])
def test_detect(prefix: bytes, expected: str) -> None:
    assert detect(prefix) == expected


@pytest.mark.parametrize("prefix", [b"", b"c", b"confi", b"t", b"tabl", b"\x02", b"\x02\x00\x00"])
def test_detect_undecided(prefix: bytes) -> None:
    assert detect(prefix) is None


@pytest.mark.parametrize("prefix", [
    b"HELO", b"x", b"configure", b"tables", b"\x03\x00\x00\x00",  # CLOSE is no first message
    imsg.request(Op.LOOKUP, Service.ALIAS, "root"), b"Config|",
])
def test_detect_impossible(prefix: bytes) -> None:
    with pytest.raises(ValueError):
        detect(prefix)


