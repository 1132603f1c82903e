"""`opensmtpd-table install procexec|consul|prometheus`: PATH_LIBEXEC detection, a
launcher smtpd's user can run and import with, atomic swaps, and a clear refusal when
that user could not run it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.smtpd import free_port, wait_for

from opensmtpd.cli.table import main
from opensmtpd.install import detect_libexec, launcher_source
from opensmtpd.table import Found, Service
from opensmtpd.table.driver import Driver

from .procexec.conftest import CHILDREN, DATA

SMTPD = "/usr/sbin/smtpd"


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory user opensmtpd can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pyos-install-unit-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_libexec_is_read_from_the_smtpd_binary() -> None:
    if not Path(SMTPD).exists():
        pytest.fail(f"{SMTPD} missing: apt-get install opensmtpd", pytrace=False)
    assert detect_libexec(SMTPD) == ("/usr/libexec/opensmtpd", f"found in {SMTPD}")


def test_libexec_from_any_binary(tmp_path: Path) -> None:
    fake = tmp_path / "smtpd"
    fake.write_bytes(b"\x7fELF\0junk\0/opt/mail/libexec/smtpd/table-%s\0/etc/x\0")
    assert detect_libexec(str(fake))[0] == "/opt/mail/libexec/smtpd"


def test_install_checks_as_smtpd_user_and_the_launcher_bridges(
        public_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    libexec = public_dir / "libexec"
    libexec.mkdir(mode=0o755)
    assert main(["install", "procexec", "--libexec", str(libexec), "--lib",
                 str(public_dir / "lib"), "--deadline", "2.5", "--protocol", "native"]) == 0
    out = capsys.readouterr().out
    launcher = libexec / "table-procexec"
    assert f"installed {launcher}" in out
    assert "checked: user opensmtpd runs it (table-procexec " in out
    assert 'table NAME "procexec:/absolute/path/to/table [ARGS...]"' in out
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o755
    text = launcher.read_text()
    assert text.startswith("#!/usr/bin/python3 -I\n")
    assert "--deadline=2.5" in text and "--protocol=native" in text
    assert (public_dir / "lib" / "opensmtpd" / "procexec" / "bridge.py").exists()
    # the installed launcher is a working bridge (here run as root, as a plain program)
    shell = public_dir / "shell_table.sh"
    shutil.copy(CHILDREN / "shell_table.sh", shell)
    (public_dir / "data").write_text(DATA)
    with Driver([str(launcher)], protocol="imsg", table="aliases",
                config=f"{shell} {public_dir / 'data'}") as driver:
        assert driver.lookup(Service.ALIAS, "root") == Found("0:0:/root")


def test_install_consul_serves_the_embedded_store(
        public_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", "consul", "--libexec", str(public_dir), "--lib",
                 str(public_dir / "lib")]) == 0
    out = capsys.readouterr().out
    launcher = public_dir / "table-consul"
    assert f"installed {launcher}" in out and "checked: user opensmtpd runs it" in out
    assert "table NAME consul:/etc/mail/table-consul.conf" in out
    assert "without httpx" not in out  # Debian's python3-httpx, for /usr/bin/python3
    config = public_dir / "c.conf"
    config.write_text(f"database = {public_dir}/kv.sqlite3\n")
    put = subprocess.run([str(launcher), "kv", "-c", str(config), "put", "aliases/alias/root",
                          "gilles"], capture_output=True, text=True, timeout=60)
    assert put.returncode == 0, put.stderr
    # smtpd's way: argv[0] is the table name, argv[1] the config
    with Driver([str(launcher)], table="aliases", config=str(config), timeout=20,
                stderr=subprocess.DEVNULL) as driver:
        assert driver.lookup(Service.ALIAS, "root") == Found("gilles")


def test_install_prometheus_runs_the_filter(public_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", "prometheus", "--libexec", str(public_dir), "--lib",
                 str(public_dir / "lib")]) == 0
    out = capsys.readouterr().out
    launcher = public_dir / "filter-prometheus"
    assert "checked: user opensmtpd runs it (filter-prometheus " in out
    assert 'filter NAME proc-exec "filter-prometheus -exporter 127.0.0.1:13742"' in out
    port = free_port()
    process = subprocess.Popen([str(launcher), "-exporter", f"127.0.0.1:{port}"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, user="opensmtpd", cwd="/")
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(b"config|smtpd-version|6.8.0\nconfig|subsystem|smtp-in\n"
                            b"config|ready\n")
        process.stdin.flush()
        assert process.stdout.readline().startswith(b"register|")

        def scraped() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=2) as reply:
                    return b"smtpd_sessions_total" in reply.read()
            except OSError:
                return False
        assert wait_for(scraped, timeout=20)
    finally:
        process.kill()
        process.wait(10)


def test_install_refuses_what_smtpd_user_cannot_import(
        public_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a real interpreter without prometheus_client: a bare venv, no system site-packages
    bare = public_dir / "bare"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(bare)],
                   check=True, timeout=120)
    assert main(["install", "prometheus", "--libexec", str(public_dir), "--lib",
                 str(public_dir / "lib"), "--python", str(bare / "bin" / "python3")]) == 1
    err = capsys.readouterr().err
    assert "user opensmtpd cannot run" in err
    assert "prometheus_client is not installed: pip install 'py-opensmtpd[prometheus]'" in err
    assert not (public_dir / "filter-prometheus").exists()  # nothing broken left behind


def test_install_refuses_what_smtpd_user_cannot_run(
        tmp_path: Path, public_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private = tmp_path / "lib"  # under pytest's root-only directory
    assert main(["install", "procexec", "--libexec", str(public_dir), "--lib",
                 str(private), "--name", "pyos-private"]) == 1
    err = capsys.readouterr().err
    assert "user opensmtpd cannot run" in err and "readable by that user" in err
    assert not (public_dir / "table-pyos-private").exists()  # nothing broken left behind


def test_install_rejects_bad_options(public_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", "procexec", "--libexec", str(public_dir), "--deadline",
                 "soon"]) == 1
    assert "bad setting" in capsys.readouterr().err
    assert main(["install", "frobnicator"]) == 64
    assert main(["install", "consul", "--libexec", str(public_dir), "--deadline", "2"]) == 64
    assert "--deadline is a table-procexec option" in capsys.readouterr().err
    assert main(["install", "procexec", "--libexec", str(public_dir / "nope")]) == 1
    assert not any(public_dir.iterdir())


def test_reinstall_swaps_the_library_and_launcher_atomically(
        public_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lib = public_dir / "lib"
    argv = ["install", "procexec", "--libexec", str(public_dir), "--lib", str(lib)]
    assert main(argv) == 0
    marker = lib / "opensmtpd" / "stale.py"
    marker.write_text("")
    launcher = public_dir / "table-procexec"
    before = launcher.stat().st_ino
    assert main([*argv, "--deadline", "3"]) == 0
    assert not marker.exists()  # a fresh copy, not a merge
    assert launcher.stat().st_ino != before  # replaced by a rename, never rewritten in place
    assert "--deadline=3" in launcher.read_text()
    assert sorted(p.name for p in lib.iterdir()) == ["opensmtpd"]  # no staging left over
    assert sorted(p.name for p in public_dir.iterdir()) == ["lib", "table-procexec"]


def test_launcher_runs_for_smtpd_user_without_the_venv(public_dir: Path) -> None:
    assert main(["install", "procexec", "--libexec", str(public_dir), "--lib",
                 str(public_dir / "lib")]) == 0
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/root/nowhere"}
    result = subprocess.run([str(public_dir / "table-procexec"), "--self-test"], env=env,
                            user="opensmtpd", capture_output=True, text=True, timeout=60,
                            cwd="/")
    assert result.returncode == 0, result.stderr
    assert f"library {public_dir / 'lib' / 'opensmtpd'}" in result.stdout
    assert os.access(public_dir / "table-procexec", os.X_OK)


def test_launcher_without_a_library_uses_the_interpreters_path() -> None:
    """What the e2e harness and the demo install: the package comes from PYTHONPATH."""
    text = launcher_source("consul")
    assert text.startswith("#!/usr/bin/python3\n")  # not -I: PYTHONPATH must apply
    assert "sys.path.insert" not in text
    assert "from opensmtpd.consul.main import main" in text
