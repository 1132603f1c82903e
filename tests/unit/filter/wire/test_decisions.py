"""Decisions are checked before smtpd sees them (it exits on a bad one, §5.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opensmtpd.filter.wire.decisions import (
    Decision,
    InvalidDecision,
    disconnect,
    fit,
    junk,
    proceed,
    reject,
    report,
    rewrite,
)
from opensmtpd.filter.wire.decisions import to_wire as wire

ALL = ("connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data", "rset",
       "quit", "noop", "help", "wiz", "commit")


@pytest.mark.parametrize("message", ["550 5.7.1 Go away", "451 later", "421 4.7.0 bye",
                                     "599 x", "400 a|b c"])
def test_valid_replies(message: str) -> None:
    assert wire(reject(message), "rcpt-to", report_allowed=False) == f"reject|{message}"
    assert wire(disconnect(message), "helo", report_allowed=False) == f"disconnect|{message}"


@pytest.mark.parametrize("message", [
    "250 ok",  # smtpd would send "421 Internal server error" instead
    "354 go", "550", "550 ", "550-multi line", "55 short", "5500 x", "x550 no",
    "550 two\nlines", "550 cr\r", "550 nul\0", "", "550\tx", "５５０ wide",
])
def test_invalid_replies(message: str) -> None:
    with pytest.raises(InvalidDecision):
        reject(message)
    with pytest.raises(InvalidDecision):
        disconnect(message)
    with pytest.raises(InvalidDecision):  # a hand-built Decision is checked on the way out
        wire(Decision("reject", message), "rcpt-to", report_allowed=False)


def test_reply_too_long() -> None:
    with pytest.raises(InvalidDecision):
        reject("550 " + "x" * 4000)


def test_reject_needs_a_parameter() -> None:
    with pytest.raises(InvalidDecision):
        wire(Decision("reject"), "rcpt-to", report_allowed=False)


@pytest.mark.parametrize("phase", ALL)
def test_proceed_everywhere(phase: str) -> None:
    assert wire(proceed(), phase, report_allowed=False) == "proceed"
    assert wire(None, phase, report_allowed=False) == "proceed"


def test_nothing_after_proceed_or_junk() -> None:
    for action in ("proceed", "junk"):
        with pytest.raises(InvalidDecision):
            wire(Decision(action, "x"), "helo", report_allowed=False)


def test_junk_but_not_at_commit() -> None:
    assert wire(junk(), "mail-from", report_allowed=False) == "junk"
    with pytest.raises(InvalidDecision):
        wire(junk(), "commit", report_allowed=False)


@pytest.mark.parametrize(("phase", "value", "expected"), [
    ("mail-from", "a@b.test", "rewrite|<a@b.test>"),
    ("mail-from", "<a@b.test>", "rewrite|<a@b.test>"),
    ("mail-from", "", "rewrite|<>"),
    ("rcpt-to", "c@d.test", "rewrite|<c@d.test>"),
    ("helo", "mx.test", "rewrite|mx.test"),
    ("ehlo", "mx.test", "rewrite|mx.test"),
])
def test_rewrite(phase: str, value: str, expected: str) -> None:
    assert wire(rewrite(value), phase, report_allowed=False) == expected


@pytest.mark.parametrize("phase", ["connect", "data", "commit", "starttls", "rset", "quit",
                                   "noop"])
def test_rewrite_where_it_does_nothing(phase: str) -> None:
    with pytest.raises(InvalidDecision):
        wire(rewrite("x"), phase, report_allowed=True)


def test_rewrite_value_checked() -> None:
    with pytest.raises(InvalidDecision):
        rewrite("a@b\nc")
    with pytest.raises(InvalidDecision):
        wire(Decision("rewrite", "a\rb"), "helo", report_allowed=False)


def test_report_only_on_7_6_and_harmless_phases() -> None:
    assert wire(report("seen"), "data", report_allowed=True) == "report|seen"
    assert wire(report("a|b"), "connect", report_allowed=True) == "report|a|b"
    with pytest.raises(InvalidDecision, match=r"7\.6"):
        wire(report("seen"), "data", report_allowed=False)
    for phase in ("helo", "ehlo", "auth", "mail-from", "rcpt-to"):  # lab-7.6 §3: unchecked
        with pytest.raises(InvalidDecision, match="rewrite"):
            wire(report("x"), phase, report_allowed=True)


def test_not_a_decision() -> None:
    for value in ("proceed", 550, True, Decision("accept")):
        with pytest.raises(InvalidDecision):
            wire(value, "helo", report_allowed=True)
    with pytest.raises(InvalidDecision):
        wire(proceed(), "data-line", report_allowed=True)


def test_fit_shortens_replies_for_0_6() -> None:
    head = "filter-result|0123456789abcdef|00000000000000ff"
    answer = "reject|550 " + "é" * 1500
    line = fit(head, answer, 2047)
    assert len(line.encode()) <= 2047 and line.startswith(f"{head}|reject|550 éé")
    assert fit(head, "reject|550 short", 2047) == f"{head}|reject|550 short"
    with pytest.raises(InvalidDecision):
        fit(head, "rewrite|<" + "a" * 3000 + ">", 2047)
    assert fit(head, "rewrite|<" + "a" * 3000 + ">", 65535).endswith(">")


@given(st.text(max_size=200))
def test_reply_check_matches_smtpd(text: str) -> None:
    """valid_smtp_response (util.c) plus "starts with 4 or 5" plus one line."""
    expected = (len(text) >= 5 and text[0] in "45" and text[1] in "0123456789"
                and text[2] in "0123456789" and text[3] == " "
                and not any(c in text for c in "\r\n\0"))
    try:
        reject(text)
    except InvalidDecision:
        assert not expected
    else:
        assert expected


def test_fit_sends_proceed_and_junk_as_they_are() -> None:
    """Nothing to shorten: only ids far longer than smtpd's make them long (the policy's
    answer must still go out)."""
    head = "filter-result|" + "i" * 3000 + "|00000000000000ff"
    assert fit(head, "proceed", 2047) == f"{head}|proceed"
    assert fit(head, "junk", 2047) == f"{head}|junk"
