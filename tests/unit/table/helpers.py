"""Helpers for the unit tier: backend scripts in tmp_path, driven as smtpd drives them."""

from __future__ import annotations

import select
import sys
import textwrap
from pathlib import Path
from typing import Any

from opensmtpd.table.driver import Driver

# The Driver puts the table name in argv[0], as smtpd does: a backend must be an
# executable with a shebang, never "python script.py".
PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[3]
SEED_EXAMPLE = REPO / "examples" / "seed_table.py"
TABLE_PASSWD = Path("/usr/libexec/opensmtpd/table-passwd")


def write_script(path: Path, body: str) -> Path:
    path.write_text(f"#!{PYTHON}\n" + textwrap.dedent(body).lstrip("\n"))
    path.chmod(0o755)
    return path


def pending(fd: int, timeout: float) -> bool:
    """True if something is readable on ``fd`` within ``timeout`` seconds."""
    return bool(select.select([fd], [], [], timeout)[0])


class Started:
    """Drivers started by one test, each with its stderr in a file; all closed at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.drivers: list[tuple[Driver, Path]] = []

    def __call__(self, script: Path | str, **options: Any) -> Driver:
        log = self.tmp_path / f"stderr-{len(self.drivers)}.log"
        options.setdefault("timeout", 5.0)
        with open(log, "wb") as handle:
            driver = Driver([str(script)], stderr=handle.fileno(), **options)
        self.drivers.append((driver, log))
        return driver

    def stderr(self, driver: Driver) -> str:
        for started, log in self.drivers:
            if started is driver:
                return log.read_text(errors="replace")
        raise KeyError(driver)

    def close_all(self) -> None:
        for driver, _ in self.drivers:
            driver.close(timeout=2.0)
