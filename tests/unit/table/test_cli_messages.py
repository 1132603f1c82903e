"""opensmtpd-table's words (issue 13 finding 7): how a backend ended, and help texts that
point only to what a user has (docs/ pages, man pages)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from opensmtpd.cli.table import main

from .helpers import PYTHON

REPO = Path(__file__).resolve().parents[3]

EXIT_AT_ONCE = """
import sys
sys.exit(3)
"""

KILLED_AT_ONCE = """
import os, signal
os.kill(os.getpid(), signal.SIGKILL)
"""

# Answers the handshake (every generation, through the library), then dies on a request.
EXIT_ON_REQUEST = """
import os
from opensmtpd.table import Table

table = Table()


@table.lookup("alias")
def alias(key):
    os._exit(7)


table.run()
"""

KILLED_ON_REQUEST = EXIT_ON_REQUEST.replace(
    "os._exit(7)", "import signal; os.kill(os.getpid(), signal.SIGTERM)")


@pytest.mark.parametrize("protocol", ["native", "imsg", "2020"])
@pytest.mark.parametrize(("body", "ended"), [
    (EXIT_AT_ONCE, "exited with status 3 before the end of the handshake"),
    (KILLED_AT_ONCE, "was killed by signal 9 (SIGKILL) before the end of the handshake"),
    (EXIT_ON_REQUEST, "exited with status 7 after the handshake"),
    (KILLED_ON_REQUEST, "was killed by signal 15 (SIGTERM) after the handshake"),
], ids=["exit-before", "killed-before", "exit-after", "killed-after"])
def test_a_backend_that_ends_is_said_to_have_ended(
        make_backend: Callable[..., Path], capsys: pytest.CaptureFixture[str],
        protocol: str, body: str, ended: str) -> None:
    backend = str(make_backend(body))
    assert main(["--protocol", protocol, "--", backend, "lookup", "alias", "root"]) == 3
    err = capsys.readouterr().err
    if protocol == "2020" and body in (EXIT_AT_ONCE, KILLED_AT_ONCE):
        ended = ended.replace("before the end of", "after")  # the 2020 dialect has none
    assert f"smtpd would exit: the backend {ended}" in err, err
    assert "Connection reset" not in err and "Errno" not in err


def help_text(*argv: str) -> str:
    result = subprocess.run([PYTHON, *argv, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


COMMANDS = {
    "opensmtpd-table": ("-m", "opensmtpd.cli.table"),
    "opensmtpd-table install": ("-m", "opensmtpd.cli.table", "install"),
    "table-procexec": ("-m", "opensmtpd.procexec"),
    "table-consul": ("-c", "import sys; from opensmtpd.consul.main import main; "
                           "sys.exit(main(sys.argv[1:]))"),
    "table-consul kv": ("-c", "import sys; from opensmtpd.consul.main import main; "
                              "sys.exit(main(sys.argv[1:]))", "kv"),
    "filter-prometheus": ("-m", "opensmtpd.prometheus"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_points_only_to_what_a_user_has(command: str) -> None:
    """docs/NAME.md pages that exist and man pages; no reference/ file, no § of one, no
    source file of the package."""
    text = help_text(*COMMANDS[command])
    assert "§" not in text and "reference/" not in text, text
    sources = {p.name for p in (REPO / "src" / "opensmtpd").rglob("*.py")}
    for name in re.findall(r"[\w./-]+\.(?:md|py)\b", text):
        if name.endswith(".md"):
            assert name.startswith("docs/") and (REPO / name).is_file(), (name, text)
        else:  # a user's own script in an example is fine, a file of ours is not
            assert name.startswith("./") or Path(name).name not in sources, (name, text)


def test_default_table_name_is_documented() -> None:
    text = " ".join(help_text("-m", "opensmtpd.cli.table").split())
    assert re.search(r"--table TABLE\s+table name sent to the backend \(default: test\)", text)
