"""table-procexec's command line (cli.py): smtpd's argv[1] split like a shell would, the
options and their environment variables, usage errors as exit 64 with a clear message,
and ``python -m opensmtpd.procexec``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opensmtpd.procexec.cli import EX_USAGE, UsageError, main, parse_args, split_command
from opensmtpd.table import Found, Service
from opensmtpd.table.driver import Driver

from .conftest import BRIDGE, child


@pytest.mark.parametrize(("argv", "message"), [
    ([], "the child command line (argv[1]) is missing"),
    (["table-foo -f /etc/foo"], "must be an absolute path, not 'table-foo'"),
    (["/bin/table 'unbalanced"], "cannot split the child command line"),
    (["   "], "the child command line is empty"),
])
def test_clear_error_for_a_bad_command_line(argv: list[str], message: str) -> None:
    result = subprocess.run([str(BRIDGE), *argv], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 64
    assert message in result.stderr and result.stdout == ""
    assert 'table NAME "procexec:/absolute/path/to/table' in result.stderr or "split" in message


def test_quote_aware_split_without_a_shell() -> None:
    assert split_command('/usr/local/bin/table-foobar -f "/etc/mail/foo bar.conf" $HOME *') == [
        "/usr/local/bin/table-foobar", "-f", "/etc/mail/foo bar.conf", "$HOME", "*"]
    with pytest.raises(UsageError):
        split_command(None)


def test_options_come_from_the_environment_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("PROTOCOL", "2020"), ("FORM_2020", "unnamed"), ("DEADLINE", "1.5"),
                        ("HANDSHAKE_TIMEOUT", "3"), ("MAX_BACKOFF", "7"),
                        ("RESTART_AFTER", "4")):
        monkeypatch.setenv(f"TABLE_PROCEXEC_{name}", value)
    _, settings, command = parse_args(["/bin/table -f x"])
    assert command == ["/bin/table", "-f", "x"]
    assert (settings.protocol, settings.form_2020, settings.deadline,
            settings.handshake_timeout, settings.max_backoff, settings.restart_after) == (
        "2020", "unnamed", 1.5, 3.0, 7.0, 4)
    _, settings, _ = parse_args(["--deadline", "2", "--protocol", "native", "/bin/table"])
    assert settings.deadline == 2.0 and settings.protocol == "native"  # the option wins


@pytest.mark.parametrize(("argv", "message"), [
    (["--deadline", "soon", "/bin/t"], "bad setting"),
    (["--restart-after", "0", "/bin/t"], "restart-after must be at least 1"),
    (["--protocol", "imsg", "/bin/t"], "invalid choice: 'imsg'"),
    (["--form-2020", "article", "/bin/t"], "invalid choice: 'article'"),
])
def test_bad_options_are_usage_errors(argv: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match=message):
        parse_args(argv)
    assert main(argv) == EX_USAGE
    assert capsys.readouterr().err.startswith("table-procexec: ")


def test_self_test_needs_no_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--self-test"]) == 0
    assert capsys.readouterr().out.startswith("table-procexec ")


def test_python_dash_m_serves(tmp_path: Path) -> None:
    """``python -m opensmtpd.procexec`` is the same program as the console script."""
    data = tmp_path / "data"
    data.write_text("root 0:0:/root\n")
    shell = child(tmp_path, "shell_table.sh")
    launcher = tmp_path / "launcher"  # smtpd gives the child's command line as argv[1]
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m opensmtpd.procexec "$1"\n')
    launcher.chmod(0o755)
    with Driver([str(launcher)], protocol="imsg", table="aliases", config=f"{shell} {data}",
                stderr=subprocess.DEVNULL) as driver:
        assert driver.lookup(Service.ALIAS, "root") == Found("0:0:/root")
    result = subprocess.run([sys.executable, "-m", "opensmtpd.procexec"], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == EX_USAGE
    assert "the child command line (argv[1]) is missing" in result.stderr
