"""Put table-procexec and its children where smtpd 6.8 runs them (as user opensmtpd).

The launcher is written by the real installer, `opensmtpd-table install procexec` (which
also checks that user opensmtpd can run it), into the test's work directory; the shared
`smtpd` fixture then installs that text as PATH_LIBEXEC/table-pyos-procexec while it
holds the smtpd lock, and removes it when smtpd stops. The library copy the launcher uses
lives next to this session's library. The children are copied from tests/children and run
by the root's /usr/bin/python3 (or /bin/sh), importing the library from smtpd's
PYTHONPATH like every e2e backend.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.smtpd import Root

from opensmtpd.cli.table import main as opensmtpd_table

from ..paths import REPO

BACKEND = "pyos-procexec"
CHILDREN = REPO / "tests" / "children"


def bridge_backend(root: Root, host: Path, **options: object) -> dict[str, str]:
    """The launcher `opensmtpd-table install procexec --name pyos-procexec` writes, as the
    ``backends`` argument of the smtpd fixture."""
    assert not root.chrooted  # the bridge is for smtpd <= 7.5: the host's 6.8
    staging = host / "libexec"
    staging.mkdir(mode=0o755)
    lib = str(Path(root.lib).parent / "procexec-lib")
    argv = ["install", "procexec", "--libexec", str(staging), "--name", BACKEND, "--lib", lib]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    assert opensmtpd_table(argv) == 0
    return {BACKEND: (staging / f"table-{BACKEND}").read_text()}


def install_child(host: Path, name: str) -> None:
    shutil.copy(CHILDREN / name, host / name)
    (host / name).chmod(0o755)


def table_line(table: str, command_line: str) -> str:
    return f'table {table} "{BACKEND}:{command_line}"\n'
