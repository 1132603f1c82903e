"""A page's walk-through: its fenced blocks and `docs-test` markers, in page order.

Marker syntax (docs/testing.md, "The docs are tests"): an HTML comment on its own line,
``<!-- docs-test: VERB ARGS -->``, invisible on the rendered page. Markers directly above
a fenced block (no other text between) apply to it; ``run`` and the page-level verbs
stand alone.

- ``routes R1 R2…`` (page): the install routes walked, each in its own clean chroot
  (default ``deb``); ``suites S1 S2…`` (page): the Debian suites (default ``bookworm``).
- ``only R…`` (block or run): the block is a step of these routes only.
- ``file PATH [MODE]`` (block): written to PATH; an smtpd.conf is checked with
  ``smtpd -n -f`` at once. ``append PATH``: appended to PATH (then checked likewise).
- ``skip REASON`` (block): not run, and why (the reason is required).
- ``run COMMAND`` (stand-alone): a step of the runner's own (a check, or the equivalent of
  a line a chroot cannot run), run where it stands.

A ``sh`` block without a marker is run as written (``sh -e``, as root, in the clone). Any
other block needs a ``file``, ``append`` or ``skip`` marker: an unclassified block is an
error, so no snippet is silently left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<verb>[a-z]+)\s*(?P<args>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
RUNNABLE = ("sh", "shell", "bash", "console")
BLOCK_VERBS = ("only", "file", "append", "skip")
PAGE_VERBS = ("routes", "suites")


class MarkerError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    """One thing the walk-through does (or, for ``skip``, does not do)."""

    kind: str            # "sh", "file", "append", "run", "skip"
    line: int            # where it is on the page (1-based)
    text: str            # the block's text, or the run command
    target: str = ""     # file/append: the path
    mode: str = ""       # file: octal mode
    reason: str = ""     # skip
    routes: tuple[str, ...] = ()  # empty: every route
    info: str = ""       # the fence's info string

    def applies(self, route: str) -> bool:
        return not self.routes or route in self.routes


@dataclass
class Page:
    path: Path
    routes: tuple[str, ...] = ("deb",)
    suites: tuple[str, ...] = ("bookworm",)
    steps: list[Step] = field(default_factory=list)

    def walk(self, route: str) -> list[Step]:
        return [step for step in self.steps if step.kind != "skip" and step.applies(route)]

    @property
    def skipped(self) -> list[Step]:
        return [step for step in self.steps if step.kind == "skip"]


def parse(path: Path) -> Page:
    lines = path.read_text(encoding="utf-8").splitlines()
    page = Page(path)
    pending: list[tuple[int, str, str]] = []  # markers waiting for their block
    index = 0

    def fail(number: int, message: str) -> MarkerError:
        return MarkerError(f"{path}:{number}: {message}")

    while index < len(lines):
        number, line = index + 1, lines[index]
        marker = MARKER.match(line)
        fence = FENCE.match(line)
        if marker:
            verb, args = marker["verb"], marker["args"]
            if verb in PAGE_VERBS:
                if not args:
                    raise fail(number, f"'{verb}' needs at least one name")
                setattr(page, verb, tuple(args.split()))
            elif verb == "run":
                if not args:
                    raise fail(number, "'run' needs a command")
                routes = _routes(pending)
                if any(v != "only" for _, v, _ in pending):
                    raise fail(number, "only an 'only' marker may precede 'run'")
                pending = []
                page.steps.append(Step("run", number, args, routes=routes))
            elif verb in BLOCK_VERBS:
                pending.append((number, verb, args))
            else:
                raise fail(number, f"unknown docs-test verb {verb!r} (expected one of "
                                   f"{', '.join((*PAGE_VERBS, 'run', *BLOCK_VERBS))})")
            index += 1
            continue
        if fence:
            end = _closing(lines, index, fence["fence"])
            if end is None:
                raise fail(number, "fenced block never closed")
            indent = len(fence["indent"])
            body = "\n".join(text[indent:] if not text[:indent].strip() else text.lstrip()
                             for text in lines[index + 1:end]) + "\n"
            page.steps.append(_block(number, fence["info"], body, pending, fail))
            pending = []
            index = end + 1
            continue
        if pending and line.strip():
            raise fail(pending[0][0], "a block marker must be directly above its block")
        index += 1
    if pending:
        raise fail(pending[0][0], "marker with no block after it")
    return page


def _closing(lines: list[str], start: int, fence: str) -> int | None:
    for index in range(start + 1, len(lines)):
        if lines[index].strip().startswith(fence) and not lines[index].strip()[len(fence):]:
            return index
    return None


def _routes(pending: list[tuple[int, str, str]]) -> tuple[str, ...]:
    routes: tuple[str, ...] = ()
    for _, verb, args in pending:
        if verb == "only":
            routes += tuple(args.split())
    return routes


def _block(number: int, info: str, body: str, pending: list[tuple[int, str, str]],
           fail: Callable[[int, str], MarkerError]) -> Step:
    routes = _routes(pending)
    kinds = [(n, v, a) for n, v, a in pending if v != "only"]
    if len(kinds) > 1:
        raise fail(kinds[1][0], "one of file, append or skip per block")
    if not kinds:
        if info in RUNNABLE:
            return Step("sh", number, body, routes=routes, info=info)
        raise fail(number, f"a {info or 'plain'} block needs a docs-test marker (file PATH, "
                           "append PATH or skip REASON): only sh blocks run as they are")
    marker_line, verb, args = kinds[0]
    words = args.split()
    if verb == "skip":
        if not args:
            raise fail(marker_line, "'skip' needs a reason")
        return Step("skip", number, body, reason=args.lstrip("—-: "), routes=routes, info=info)
    if not words or not words[0].startswith("/") or len(words) > (2 if verb == "file" else 1):
        raise fail(marker_line, f"expected '{verb} /ABSOLUTE/PATH"
                                f"{' [MODE]' if verb == 'file' else ''}', got {args!r}")
    mode = words[1] if len(words) > 1 else ""
    if mode and not re.fullmatch(r"0?[0-7]{3}", mode):
        raise fail(marker_line, f"expected an octal mode such as 755, got {mode!r}")
    return Step(verb, number, body, target=words[0], mode=mode, routes=routes, info=info)


REPO = Path(__file__).resolve().parents[2]


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
