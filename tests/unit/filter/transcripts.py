"""Real smtpd -> filter lines, captured from smtpd 6.8 (protocol 0.6) and 7.6 (0.7).

data/smtpd-VERSION.in holds every line smtpd wrote to a logging filter in the labs
(shared/reference/lab-*/filter-transcript.txt), several runs one after the other, each
starting with its handshake; data/smtpd-VERSION.out what that filter answered.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
VERSIONS = ("6.8", "7.6")


def lines(smtpd: str) -> list[str]:
    return (DATA / f"smtpd-{smtpd}.in").read_text().splitlines()


def answers(smtpd: str) -> list[str]:
    return (DATA / f"smtpd-{smtpd}.out").read_text().splitlines()


def runs(smtpd: str) -> list[list[str]]:
    """One list of lines per smtpd run (each begins with config|smtpd-version)."""
    result: list[list[str]] = []
    for line in lines(smtpd):
        if line.startswith("config|smtpd-version|") or not result:
            result.append([])
        result[-1].append(line)
    return result


def events(smtpd: str) -> list[str]:
    """The lines after the handshakes: reports and filter queries."""
    return [line for line in lines(smtpd) if not line.startswith("config|")]


def find(smtpd: str, *parts: str) -> str:
    """The first line containing every part."""
    for line in lines(smtpd):
        if all(part in line for part in parts):
            return line
    raise LookupError(f"no line with {parts} in the {smtpd} transcript")
