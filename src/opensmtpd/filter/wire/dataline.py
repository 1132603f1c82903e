"""Message lines through the data-line phase (filter-protocol.md §4.3), sans-IO.

smtpd hands the filter the client's lines still dot-stuffed (``..x`` for a line ``.x``),
ends the message with a lone ``.``, and parses whatever comes back as SMTP DATA: output
must stay stuffed and the final ``.`` must be echoed, or the client waits forever.
Handlers here see and return unstuffed text; these helpers do the rest.
"""

from __future__ import annotations

from collections.abc import Iterable

END = "."


def unstuff(line: str) -> str:
    """The text of a received line (``..x`` -> ``.x``)."""
    return line[1:] if line[:1] == "." else line


def stuff(text: str) -> str:
    """A line ready for smtpd (``.x`` -> ``..x``)."""
    return "." + text if text[:1] == "." else text


def for_smtpd(text: str, limit: int) -> list[str]:
    """Unstuffed ``text`` as stuffed lines of at most ``limit`` bytes each.

    Up to smtpd 7.3 a longer answer is silently truncated, and no smtpd reads a line
    beyond 64 KiB: a line break inside it loses nothing, truncation would.
    """
    line = "." + text if text[:1] == "." else text
    if len(line) * 4 <= limit:
        return [line]
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) + len(line) - len(text) <= limit:
        return [line]
    room = max(limit - 1, 4)  # one byte for a stuffing dot
    pieces = []
    while raw:
        cut = min(room, len(raw))
        while 0 < cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # not inside a character
            cut -= 1
        if cut == 0:
            cut = min(room, len(raw))
        pieces.append(stuff(raw[:cut].decode("utf-8", "surrogateescape")))
        raw = raw[cut:]
    return pieces


def output_lines(result: object, original: str) -> list[str]:
    """What a data-line or message handler returned, as unstuffed lines.

    None keeps ``original``; a str may hold several lines (``\\n``, ``\\r\\n``); an
    iterable gives one line per item. Raises TypeError for anything else.
    """
    if result is None:
        return [original]
    if isinstance(result, str):
        return _split(result)
    if isinstance(result, Iterable):
        lines: list[str] = []
        for item in result:
            if not isinstance(item, str):
                raise TypeError(f"a line must be a str, not {type(item).__name__}")
            lines.extend(_split(item))
        return lines
    raise TypeError(f"a data handler must return str, lines or None, "
                    f"not {type(result).__name__}")


def _split(text: str) -> list[str]:
    if not text.isascii():
        try:  # a lone surrogate cannot be written: refused here, where the policy applies
            text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise TypeError("a line must be text that encodes to UTF-8 "
                            "(it holds a lone surrogate)") from None
    if "\n" not in text and "\r" not in text:
        return [text]
    return [part.rstrip("\r") for part in text.replace("\r\n", "\n").split("\n")]
