"""Run the real table-procexec console script the way smtpd 6.8 runs it (imsg on fd 0,
argv[1] = the child's command line), in front of the child programs of tests/children."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opensmtpd.table import Found, Service
from opensmtpd.table.driver import Driver

REPO = Path(__file__).resolve().parents[3]
CHILDREN = REPO / "tests" / "children"
BRIDGE = Path(sys.executable).parent / "table-procexec"
DATA = "root 0:0:/root\nvuser 65534:65534:/var/empty\nalice alice:$6$salt$hash\n" \
       "example.org example.org\n"


def child(tmp_path: Path, name: str) -> Path:
    """A copy of tests/children/NAME; Python ones run by this interpreter."""
    source = (CHILDREN / name).read_text()
    if source.startswith("#!/usr/bin/python3"):
        source = f"#!{sys.executable}\n" + source.split("\n", 1)[1]
    path = tmp_path / name
    path.write_text(source)
    path.chmod(0o755)
    return path


class Bridged:
    """One bridge started through the Driver, its stderr in a file."""

    def __init__(self, tmp_path: Path, command_line: str, table: str, timeout: float) -> None:
        self.log_path = tmp_path / f"bridge-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as handle:
            self.driver = Driver([str(BRIDGE)], protocol="imsg", table=table,
                                 config=command_line, timeout=timeout, stderr=handle.fileno())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        """Wait until ``pattern`` (a regex) matches ``count`` times in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(pattern, self.log())
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not in the bridge log:\n{self.log()}")

    def child_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"child pid (\d+)", self.log())]


@pytest.fixture(autouse=True)
def _log_level() -> Iterator[None]:
    """A test that quiets the library's logger (the property tests) does not silence the
    log lines the next test asserts on."""
    logger = logging.getLogger("opensmtpd")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.write_text(DATA)
    return path


@pytest.fixture
def bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Bridged]]:
    """``bridge("/child args", deadline=0.5, ...)``: settings go through the environment,
    as smtpd's environment would carry them."""
    started: list[Bridged] = []

    def start(command_line: str, *, table: str = "aliases", timeout: float = 10.0,
              **settings: object) -> Bridged:
        for name, value in settings.items():
            monkeypatch.setenv(f"TABLE_PROCEXEC_{name.upper()}", str(value))
        bridged = Bridged(tmp_path, command_line, table, timeout)
        started.append(bridged)
        return bridged

    yield start
    for bridged in started:
        bridged.driver.close(timeout=10)
        for pid in bridged.child_pids():  # never leave one behind, even if a test failed
            if ours(pid, tmp_path):
                os.kill(pid, 9)


def fault_child(bridge: Callable[..., Bridged], tmp_path: Path, data_file: Path,
                **settings: object) -> tuple[Bridged, Path]:
    """A bridge in front of tests/children/fault_table.py, serving; its mode file (what
    the child does next: ok, garbage, hang:S, exit, crash-start)."""
    mode = tmp_path / "mode"
    mode.write_text("ok")
    bridged = bridge(f"{child(tmp_path, 'fault_table.py')} {mode} {data_file}",
                     **{"protocol": "native", "deadline": 0.5, "max_backoff": 0.5, **settings})
    assert bridged.driver.lookup(Service.USERINFO, "vuser") == Found("65534:65534:/var/empty")
    return bridged, mode


def ours(pid: int, tmp_path: Path) -> bool:
    """Still running one of this test's children (not a recycled PID)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and str(tmp_path).encode() in cmdline
