"""The wheel and sdist of `make dist`: twine-clean, no test harness, no required
dependency, and a plain `pip install` that serves a table backend and explains a missing
extra in one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

import opensmtpd
from opensmtpd.table import Found, NotFound, Service
from opensmtpd.table.driver import Driver

from .builds import REPO, built_dist

TABLE = """\
from opensmtpd.table import Table

table = Table()


@table.lookup("alias")
def alias(key):
    return {"root": "gilles@poolp.org"}.get(key)


table.run()
"""


def _metadata(wheel: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(name).decode())
    return list(message.items())


def test_twine_check_passes() -> None:
    wheel, sdist = built_dist()
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel),
                             str(sdist)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_holds_the_library_and_no_test_harness() -> None:
    wheel, _ = built_dist()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        sources = {n: archive.read(n).decode(errors="replace") for n in names
                   if n.endswith(".py")}
    library = [n for n in names if ".dist-info/" not in n]
    assert all(n.startswith("opensmtpd/") for n in library), library
    assert "opensmtpd/table/__init__.py" in library and "opensmtpd/py.typed" in library
    # the harnesses that start, stop and wipe smtpd (and its spool) or Consul stay in tests/
    assert not [n for n in library if Path(n).stem == "testing"], library
    for name, text in sources.items():
        assert "/var/spool/smtpd" not in text, f"{name} touches smtpd's spool"
    # every source file is in the wheel (nothing forgotten by the build configuration)
    tree = {f"opensmtpd/{p.relative_to(REPO / 'src' / 'opensmtpd')}"
            for p in (REPO / "src" / "opensmtpd").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
    assert set(library) == tree


def test_metadata_requires_nothing_but_extras() -> None:
    wheel, _ = built_dist()
    fields = _metadata(wheel)
    requires = [value for key, value in fields if key == "Requires-Dist"]
    assert requires and all("extra ==" in r for r in requires), requires
    extras = {value for key, value in fields if key == "Provides-Extra"}
    assert {"consul", "prometheus"} <= extras
    assert any(r.startswith("httpx") and "'consul'" in r for r in requires)
    assert any(r.startswith("prometheus-client") and "'prometheus'" in r for r in requires)
    assert ("License-Expression", "ISC") in fields
    assert ("Version", opensmtpd.__version__) in fields


def test_the_sdist_builds_everything_and_carries_nothing_local() -> None:
    _, sdist = built_dist()
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    for needed in ("pyproject.toml", "LICENSE", "README.md", "debian/control",
                   "man/table-consul.5", "src/opensmtpd/__init__.py", "tests/unit/__init__.py",
                   "ops/grafana/opensmtpd-dashboard.json"):
        assert needed in names, needed
    for name in names:
        assert not name.startswith(("build/", ".venv/", "dist/", ".git/")), name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name


@pytest.fixture(scope="module")
def bare_venv() -> Iterator[Path]:
    """A virtualenv with only the wheel, installed from no index: any required dependency
    would make pip fail."""
    wheel, _ = built_dist()
    directory = Path(tempfile.mkdtemp(prefix="pyos-wheel-"))
    try:
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(directory)], check=True,
                       timeout=300)
        result = subprocess.run([str(directory / "bin" / "pip"), "install", "-q", "--no-index",
                                 str(wheel)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run(venv: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True,
                          text=True, input=stdin, timeout=60, cwd="/")


def test_plain_pip_install_serves_a_table_without_any_dependency(bare_venv: Path,
                                                                 tmp_path: Path) -> None:
    listing = _run(bare_venv, "pip", "list", "--format=freeze").stdout
    assert "py-opensmtpd==" in listing
    assert "httpx" not in listing and "prometheus" not in listing.lower()
    backend = tmp_path / "table.py"
    backend.write_text(f"#!{bare_venv / 'bin' / 'python'}\n" + TABLE)
    backend.chmod(0o755)
    with Driver([str(backend)], table="aliases", timeout=20) as driver:
        assert driver.lookup(Service.ALIAS, "root") == Found("gilles@poolp.org")
        assert driver.lookup(Service.ALIAS, "nobody") == NotFound()


def test_table_consul_without_httpx_embedded_works_consul_says_which_extra(
        bare_venv: Path, tmp_path: Path) -> None:
    embedded = tmp_path / "embedded.conf"
    embedded.write_text(f"database = {tmp_path}/kv.sqlite3\n")
    assert _run(bare_venv, "table-consul", "kv", "-c", str(embedded), "put", "a/alias/b",
                "c").returncode == 0
    assert _run(bare_venv, "table-consul", "kv", "-c", str(embedded), "get",
                "a/alias/b").stdout == "c\n"
    consul = tmp_path / "consul.conf"
    consul.write_text("store = consul\naddress = 127.0.0.1:1\n")
    result = _run(bare_venv, "table-consul", "kv", "-c", str(consul), "get", "x")
    assert result.returncode == 1
    assert result.stderr == ("table-consul: httpx is not installed: pip install "
                             "'py-opensmtpd[consul]' (Debian: apt-get install python3-httpx)\n")
    self_test = _run(bare_venv, "table-consul", "--self-test")
    assert self_test.returncode == 0 and "without httpx (extra [consul])" in self_test.stdout


def test_filter_prometheus_without_its_extra_says_so_and_keeps_smtpd_up(
        bare_venv: Path) -> None:
    self_test = _run(bare_venv, "filter-prometheus", "--self-test")
    assert self_test.returncode == 1
    assert self_test.stderr == ("filter-prometheus: prometheus_client is not installed: pip "
                                "install 'py-opensmtpd[prometheus]' (Debian: apt-get install "
                                "python3-prometheus-client)\n")
    # run by smtpd: one log line, then a filter that registers nothing and exits on EOF only
    handshake = "config|smtpd-version|6.8.0\nconfig|subsystem|smtp-in\nconfig|ready\n"
    served = _run(bare_venv, "filter-prometheus", stdin=handshake)
    assert served.returncode == 0
    assert served.stdout == "register|ready\n"
    lines = served.stderr.splitlines()
    assert len(lines) == 1 and "prometheus_client is not installed" in lines[0], lines
    assert "Traceback" not in served.stderr
