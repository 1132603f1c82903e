"""The table-consul command: kv on the embedded store, check, self-test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import opensmtpd

SCRIPT = str(Path(sys.executable).parent / "table-consul")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, input=stdin,
                          timeout=60)


def test_kv_put_get_list_delete(tmp_path: Path) -> None:
    config = tmp_path / "c.conf"
    config.write_text(f"database = {tmp_path}/kv.sqlite3\n")
    c = ("kv", "-c", str(config))
    assert run(*c, "put", "aliases/alias/root", "gilles").returncode == 0
    assert run(*c, "put", "aliases/alias/postmaster", "-", stdin="root\n").returncode == 0
    assert run(*c, "get", "aliases/alias/root").stdout == "gilles\n"
    assert run(*c, "put", "aliases/alias/multi", "-", stdin="a\nb\n").returncode == 0
    assert run(*c, "list", "aliases/").stdout == (
        "aliases/alias/multi\ta\\nb\naliases/alias/postmaster\troot\n"
        "aliases/alias/root\tgilles\n")
    assert run(*c, "delete", "aliases/alias/root").returncode == 0
    missing = run(*c, "get", "aliases/alias/root")
    assert missing.returncode == 1 and "no key 'aliases/alias/root'" in missing.stderr
    assert run(*c, "delete", "-r", "aliases/").returncode == 0
    assert run(*c, "list").stdout == ""


def test_kv_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    config = tmp_path / "c.conf"
    config.write_text(f"database = {tmp_path}/none.sqlite3\n")
    result = run("kv", "-c", str(config), "get", "x")
    assert result.returncode == 1 and "no such store" in result.stderr
    assert "Traceback" not in result.stderr
    config.write_text("store = consul\naddress = 127.0.0.1:1\n")
    result = run("kv", "-c", str(config), "put", "x", "y")
    assert result.returncode == 1 and "ConnectError" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_prints_effective_settings_or_the_error(tmp_path: Path) -> None:
    config = tmp_path / "c.conf"
    config.write_text("wait = 10s\n")
    result = run("check", str(config))
    assert result.returncode == 0
    assert f"wait = 10.0    # {config}:1: wait" in result.stdout
    assert "store = embedded    # default" in result.stdout
    config.write_text("\nwait = 10s\nstore = zookeeper\n")
    result = run("check", str(config))
    assert result.returncode == 2
    assert f"{config}:3: store: invalid value 'zookeeper'" in result.stderr


def test_self_test_says_what_runs_it() -> None:
    result = run("--self-test")
    assert result.returncode == 0, result.stderr
    library = Path(opensmtpd.__file__).parent
    assert result.stdout.startswith(f"table-consul {opensmtpd.__version__}: python "
                                    f"{sys.version.split()[0]} (")
    assert result.stdout.rstrip().endswith(f"library {library}")
    assert "without httpx" not in result.stdout  # the test venv has the [consul] extra


def test_serving_without_a_config_reads_the_default_file_if_any(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opensmtpd.consul import main as consul_main

    seen: list[str | None] = []
    monkeypatch.setattr("opensmtpd.consul.backend.build_table",
                        lambda path: seen.append(path) or _Stop())
    default = tmp_path / "table-consul.conf"
    monkeypatch.setattr(consul_main, "DEFAULT_CONFIG", str(default))
    consul_main.serve(None)
    default.write_text("")
    consul_main.serve(None)
    consul_main.serve("/etc/other.conf")
    assert seen == [None, str(default), "/etc/other.conf"]


class _Stop:
    def run(self) -> None:
        pass
