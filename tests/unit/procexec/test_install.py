"""`opensmtpd-table install procexec`: PATH_LIBEXEC detection, a launcher smtpd's user
can run, and a clear refusal when it could not."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from opensmtpd.cli.table import main
from opensmtpd.procexec.install import detect_libexec
from opensmtpd.table import Found, Service
from opensmtpd.table.driver import Driver

from .conftest import CHILDREN, DATA

SMTPD = "/usr/sbin/smtpd"


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory user opensmtpd can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pyos-procexec-unit-", dir="/var/tmp"))
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
    assert "checked: user opensmtpd runs it" in out
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
    assert main(["install", "procexec", "--libexec", str(public_dir / "nope")]) == 1
    assert not any(public_dir.iterdir())


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
