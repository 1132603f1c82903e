"""The fuzz tier: figures of every run are printed at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import budget, procs

FIGURES: list[str] = []


@pytest.fixture(autouse=True)
def _stop_processes() -> Iterator[None]:
    yield
    procs.stop_all()


@pytest.fixture
def figures() -> Iterator[list[str]]:
    yield FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section(f"fuzz figures (FUZZ_SEED={budget.SEED}, "
                                 f"{budget.PROCESS_INPUTS} inputs per process target)")
        for line in FIGURES:
            terminalreporter.write_line(line)
