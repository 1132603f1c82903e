"""The table-consul command: kv on the embedded store, check, install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opensmtpd.consul.install import wrapper_source
from opensmtpd.table import Found, Service
from opensmtpd.table.driver import Driver

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


def test_install_writes_a_backend_smtpd_can_run(tmp_path: Path) -> None:
    libexec, library = tmp_path / "libexec", tmp_path / "lib"
    result = run("install", "--libexec", str(libexec), "--python", sys.executable,
                 "--library", str(library))
    assert result.returncode == 0, result.stderr
    backend = libexec / "table-consul"
    assert backend.stat().st_mode & 0o755 == 0o755
    assert (library / "opensmtpd" / "consul" / "main.py").stat().st_mode & 0o444 == 0o444
    assert backend.read_text() == wrapper_source(sys.executable, str(library))
    config = tmp_path / "c.conf"
    config.write_text(f"database = {tmp_path}/kv.sqlite3\n")
    run("kv", "-c", str(config), "put", "aliases/alias/root", "gilles")
    # smtpd's way: argv[0] is the table name, argv[1] the config
    with Driver([str(backend)], table="aliases", config=str(config), timeout=10,
                stderr=subprocess.DEVNULL) as driver:
        assert driver.lookup(Service.ALIAS, "root") == Found("gilles")


def test_install_warns_when_the_interpreter_lacks_a_module(tmp_path: Path) -> None:
    result = run("install", "--libexec", str(tmp_path), "--python", sys.executable,
                 "--no-library")
    assert result.returncode == 0
    # the venv has httpx and the package: nothing is missing
    assert "cannot import" not in result.stderr
    result = run("install", "--libexec", str(tmp_path), "--python", "/bin/false",
                 "--no-library")
    assert "cannot import httpx, opensmtpd.consul.main" in result.stderr
