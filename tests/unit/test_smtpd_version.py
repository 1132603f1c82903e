"""``config|smtpd-version`` into a comparable version, shared by filters and tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opensmtpd.smtpd_version import SmtpdVersion, parse_smtpd_version


@pytest.mark.parametrize(("text", "expected"), [
    ("6.6.4p1", (6, 6, 4)),
    ("6.8.0p2", (6, 8, 0)),           # Debian 12
    ("7.6.0-portable", (7, 6, 0)),    # Debian 13
    ("7.8.0-portable", (7, 8, 0)),
    ("7.9.0-portable", (7, 9, 0)),    # Debian sid
    ("7.9.0", (7, 9, 0)),             # OpenBSD base, as in smtpd-filters(7)
    ("7.6.0-procexec", (7, 6, 0)),    # table-procexec speaking for smtpd <= 7.5
    ("7.10", (7, 10, 0)),
])
def test_known_forms(text: str, expected: tuple[int, int, int]) -> None:
    version = parse_smtpd_version(text)
    assert version == SmtpdVersion(*expected)
    assert str(version) == ".".join(map(str, expected))


@pytest.mark.parametrize("text", [
    None, "", "7", "seven", "7.9.0 portable", "7.9.0-", "1.2.3.4", "x7.9.0", "7.9.0\n",
    "7.9.0-por|table", "-7.9.0", "7..9", "7.9.0" + "-x" * 40, "٧.٩.٠",
])
def test_garbage_is_unknown(text: str | None) -> None:
    assert parse_smtpd_version(text) is None


def test_compares_like_a_tuple() -> None:
    v68, v76, v79 = (parse_smtpd_version(t) for t in ("6.8.0p2", "7.6.0-portable", "7.9.0"))
    assert v68 is not None and v76 is not None and v79 is not None
    assert v68 < v76 < v79
    assert v79 >= (7, 9) and v76 < (7, 9) and not v79 < (7, 9, 0)
    assert parse_smtpd_version("7.10.0") > v79  # numbers, not strings


@given(st.text(max_size=80))
def test_never_raises(text: str) -> None:
    version = parse_smtpd_version(text)
    assert version is None or all(isinstance(part, int) for part in version)
