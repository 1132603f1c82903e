"""Dot-stuffing and line lengths through the data-line phase (§4.3, §5.6)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from opensmtpd.filter.wire.dataline import for_smtpd, output_lines, stuff, unstuff


def test_stuffing() -> None:
    assert unstuff("..x") == ".x" and unstuff("x") == "x" and unstuff("..") == "."
    assert stuff(".x") == "..x" and stuff("x") == "x" and stuff(".") == ".."
    assert stuff("") == "" and unstuff("") == ""


def test_output_lines() -> None:
    assert output_lines(None, "orig") == ["orig"]
    assert output_lines("a", "orig") == ["a"]
    assert output_lines("a\r\nb\nc", "orig") == ["a", "b", "c"]
    assert output_lines(["a", "b\nc"], "orig") == ["a", "b", "c"]
    assert output_lines([], "orig") == []
    for bad in (1, [b"x"], object()):
        try:
            output_lines(bad, "orig")
        except TypeError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_short_lines_untouched() -> None:
    assert for_smtpd("hello", 2000) == ["hello"]
    assert for_smtpd(".hidden", 2000) == ["..hidden"]
    assert for_smtpd("x" * 1997, 1997) == ["x" * 1997]
    assert for_smtpd("." + "x" * 1995, 1997) == [".." + "x" * 1995]
    assert len(for_smtpd("." + "x" * 1996, 1997)) == 2


def test_long_line_cut_for_smtpd_6_8() -> None:
    pieces = for_smtpd("a" * 5000, 1997)
    assert "".join(pieces) == "a" * 5000
    assert all(len(p) <= 1997 for p in pieces) and len(pieces) == 3


@given(st.text(max_size=3000), st.integers(min_value=5, max_value=300))
def test_cut_loses_nothing_and_stays_stuffed(text: str, limit: int) -> None:
    text = text.replace("\n", " ")
    pieces = for_smtpd(text, limit)
    assert "".join(unstuff(p) for p in pieces) == text
    for piece in pieces:
        assert len(piece.encode("utf-8", "surrogateescape")) <= limit
        assert piece != "."  # never a lone dot: it would end the message
        assert not piece.startswith(".") or piece.startswith("..")
