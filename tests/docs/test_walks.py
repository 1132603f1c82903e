"""Every page's walk-through, in a clean chroot per page, route and suite (conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .markdown import MarkerError, pages, parse
from .walk import Walk


@dataclass(frozen=True)
class Case:
    page: Path
    route: str
    suite: str

    def __str__(self) -> str:
        return f"{self.page.stem}-{self.route}-{self.suite}"


def cases() -> list[Case]:
    found = []
    for path in pages():
        try:
            page = parse(path)
        except MarkerError:  # the walk reports it (test_markers.py too)
            found.append(Case(path, "deb", "bookworm"))
            continue
        for route in page.routes:
            if any(step.kind in ("sh", "run", "file", "append") for step in page.walk(route)):
                found.extend(Case(path, route, suite) for suite in page.suites)
    return found


@pytest.mark.e2e
@pytest.mark.parametrize("walk", cases(), ids=str)
def test_page_walks_through(walk: Case, page_root: Path) -> None:
    Walk(parse(walk.page), walk.route, page_root).run()
