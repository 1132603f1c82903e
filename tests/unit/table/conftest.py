from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import PYTHON, SEED_EXAMPLE, Started, write_script


@pytest.fixture
def make_backend(tmp_path: Path) -> Callable[..., Path]:
    """Write an executable backend script (venv shebang) into tmp_path."""
    def make(body: str, name: str = "backend.py") -> Path:
        return write_script(tmp_path / name, body)
    return make


@pytest.fixture
def seed_script(tmp_path: Path) -> Path:
    """examples/seed_table.py, unchanged but for the shebang (the venv's python)."""
    lines = SEED_EXAMPLE.read_text().splitlines(keepends=True)
    assert lines[0].startswith("#!")
    path = tmp_path / "seed_table.py"
    path.write_text(f"#!{PYTHON}\n" + "".join(lines[1:]))
    path.chmod(0o755)
    return path


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Started]:
    """Start backends through the Driver (as smtpd does); closed at teardown."""
    started = Started(tmp_path)
    yield started
    started.close_all()
