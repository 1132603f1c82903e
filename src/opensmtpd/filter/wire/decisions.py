"""Decisions a filter answers a query with (proceed, junk, reject, disconnect, rewrite,
report: the protocol's names), checked here before smtpd sees them.

smtpd exits on a malformed answer (filter-protocol.md §5.1) and replaces an SMTP reply it
does not like with ``421 Internal server error`` (§4.2), so every rule is enforced locally:

* reject and disconnect take one SMTP reply line, ``4xx`` or ``5xx`` then a space and text
  (``valid_smtp_response``); a reply starting with 421 makes smtpd disconnect;
* proceed and junk take nothing; junk is fatal in the commit phase;
* rewrite only where smtpd re-checks the new value (helo, ehlo, auth, mail-from,
  rcpt-to); mail-from and rcpt-to need ``<…>``, added here when missing;
* report (smtpd >= 7.6 only) replaces the command's parameter without any check
  (lab-7.6 §3), so it is allowed only in phases that ignore their parameter;
* no CR, LF or NUL anywhere; no line longer than smtpd takes back (2047 bytes up to
  protocol 0.6, where longer answers are silently cut).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ACTIONS = ("proceed", "junk", "reject", "disconnect", "rewrite", "report")
REWRITABLE = frozenset(("helo", "ehlo", "auth", "mail-from", "rcpt-to"))
REPORTABLE = frozenset(("connect", "starttls", "data", "commit", "rset", "quit", "noop"))
_BRACKETED = frozenset(("mail-from", "rcpt-to"))
_REPLY = re.compile(r"[45][0-9][0-9] [^\r\n\0]+\Z")
_FORBIDDEN = re.compile(r"[\r\n\0]")
MAX_REPLY = 4000  # smtpd's reply buffer is LINE_MAX*2 (§4.2): longer text is cut


class InvalidDecision(ValueError):
    """A decision smtpd would refuse (fatal, or a 421 in place of the intended reply)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one filter query. Build it with the functions below."""

    action: str
    param: str | None = None

    def __str__(self) -> str:
        return self.action if self.param is None else f"{self.action}|{self.param}"


PROCEED = Decision("proceed")
JUNK = Decision("junk")


def check_reply(message: str) -> str:
    if not isinstance(message, str) or not _REPLY.match(message):
        raise InvalidDecision(
            f"an SMTP reply must be one line '4xx text' or '5xx text', got {message!r:.60}")
    if len(message) > MAX_REPLY:
        raise InvalidDecision(f"SMTP reply longer than {MAX_REPLY} characters")
    return _encodable("an SMTP reply", message)


def _check_text(what: str, text: str) -> str:
    if not isinstance(text, str):
        raise InvalidDecision(f"{what} must be a str, got {type(text).__name__}")
    if _FORBIDDEN.search(text):
        raise InvalidDecision(f"{what} must not contain CR, LF or NUL")
    return _encodable(what, text)


def _encodable(what: str, text: str) -> str:
    if not text.isascii():
        try:
            text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise InvalidDecision(f"{what} holds a lone surrogate: it cannot be written") \
                from None
    return text


def proceed() -> Decision:
    """Let the command through (the next filter of the chain is asked)."""
    return PROCEED


def junk() -> Decision:
    """Mark the session or transaction as spam (``X-Spam: Yes``); not in commit."""
    return JUNK


def reject(message: str) -> Decision:
    """Refuse the command with this reply, e.g. ``"550 5.7.1 Go away"``."""
    return Decision("reject", check_reply(message))


def disconnect(message: str) -> Decision:
    """Send this reply, e.g. ``"421 4.7.0 Bye"``, and close the session."""
    return Decision("disconnect", check_reply(message))


def rewrite(value: str) -> Decision:
    """Replace the command's parameter (an address for mail-from and rcpt-to)."""
    return Decision("rewrite", _check_text("a rewrite value", value))


def report(text: str) -> Decision:
    """smtpd >= 7.6: proceed, with ``text`` in the filter-response report."""
    return Decision("report", _check_text("a report text", text))


def to_wire(decision: object, phase: str, *, report_allowed: bool) -> str:
    """The decision as it goes after ``filter-result|SESSION|TOKEN|``.

    Raises InvalidDecision when smtpd would fatal or misread it in this phase.
    """
    if phase == "data-line":
        raise InvalidDecision("data-line is answered with lines, not a decision")
    if decision is None or decision is PROCEED:
        return "proceed"
    if not isinstance(decision, Decision):
        raise InvalidDecision(f"a filter handler must return a Decision or None, "
                              f"not {type(decision).__name__}")
    action, param = decision.action, decision.param
    if action in ("proceed", "junk"):
        if param is not None:
            raise InvalidDecision(f"{action} takes no parameter")
        if action == "junk" and phase == "commit":
            raise InvalidDecision("junk is not allowed in the commit phase")
        return action
    if action in ("reject", "disconnect"):
        return f"{action}|{check_reply(param or '')}"
    if action == "rewrite":
        if phase not in REWRITABLE:
            raise InvalidDecision(f"rewrite has no effect in the {phase} phase "
                                  f"(only {', '.join(sorted(REWRITABLE))})")
        value = _check_text("a rewrite value", param or "")
        if phase in _BRACKETED and not (value.startswith("<") and value.endswith(">")):
            value = f"<{value}>"
        return f"rewrite|{value}"
    if action == "report":
        if not report_allowed:
            raise InvalidDecision("report needs smtpd >= 7.6 (earlier ones exit on it)")
        if phase not in REPORTABLE:
            raise InvalidDecision(f"report would replace the {phase} parameter unchecked; "
                                  "use rewrite")
        return f"report|{_check_text('a report text', param or '')}"
    raise InvalidDecision(f"unknown action {action!r:.30}")


def fit(head: str, answer: str, limit: int) -> str:
    """``head|answer`` if smtpd takes it back whole; a reject or disconnect reply is
    shortened to fit (better a short reply than the command let through); a too long
    rewrite or report raises. proceed and junk have nothing to shorten: only ids far
    longer than smtpd's make them long, and they go as they are."""
    line = f"{head}|{answer}"
    if len(line) * 4 <= limit or len(line.encode("utf-8", "surrogateescape")) <= limit:
        return line
    action, _, text = answer.partition("|")
    if action in ("proceed", "junk"):
        return line
    if action not in ("reject", "disconnect"):
        raise InvalidDecision(f"answer longer than the {limit} bytes smtpd takes back")
    start = f"{head}|{action}|"
    keep = limit - len(start.encode("utf-8", "surrogateescape"))
    if keep < 16:  # the ids alone fill the line (never smtpd's): better long than invalid
        return line
    return start + text.encode("utf-8", "surrogateescape")[:keep].decode("utf-8", "surrogateescape")
