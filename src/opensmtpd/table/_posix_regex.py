"""POSIX extended regular expressions from the C library, as smtpd uses them.

smtpd matches ``regex`` tables with ``regcomp(REG_EXTENDED|REG_NOSUB[|REG_ICASE])`` and
``regexec()`` (table.c ``table_regex_match``). Python's ``re`` is another language:
glibc reads ``\\d`` as a plain ``d``, knows ``[[:alpha:]]``, has no lazy quantifiers. So
the same functions are called here, through ctypes, on glibc. Elsewhere Python's ``re``
stands in (close, not identical), and ``EXACT`` says which one is in use.
"""

from __future__ import annotations

import ctypes
import platform
import re
import weakref

# glibc <regex.h>; regex_t is 64 bytes on LP64 glibc: the buffer leaves room to spare.
_REG_EXTENDED, _REG_ICASE, _REG_NOSUB = 1, 2, 8
_REGEX_T_SIZE = 256


def _libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.regcomp.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int)
        libc.regexec.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                 ctypes.c_void_p, ctypes.c_int)
        libc.regfree.argtypes = (ctypes.c_void_p,)
        libc.regfree.restype = None
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
EXACT = _LIBC is not None


class Regex:
    """One compiled pattern; ``search(text)`` is regexec() == 0. Freed with the object."""

    __slots__ = ("__weakref__", "_buffer", "_python")

    def __init__(self, pattern: str, ignore_case: bool = False) -> None:
        """Raises ValueError where regcomp() fails."""
        self._python: re.Pattern[str] | None = None
        self._buffer: ctypes.Array[ctypes.c_char] | None = None
        if _LIBC is None:
            try:
                self._python = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
            except re.error as exc:
                raise ValueError(str(exc)) from None
            return
        buffer = ctypes.create_string_buffer(_REGEX_T_SIZE)
        flags = _REG_EXTENDED | _REG_NOSUB | (_REG_ICASE if ignore_case else 0)
        if _LIBC.regcomp(buffer, _bytes(pattern), flags) != 0:
            raise ValueError(f"regcomp() refuses {pattern[:60]!r}")
        self._buffer = buffer
        weakref.finalize(self, _LIBC.regfree, buffer)

    def search(self, text: str) -> bool:
        if self._python is not None:
            return self._python.search(text) is not None
        assert _LIBC is not None
        return int(_LIBC.regexec(self._buffer, _bytes(text), 0, None, 0)) == 0


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").split(b"\0", 1)[0]  # a C string ends there
