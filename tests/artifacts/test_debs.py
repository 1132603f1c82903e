"""The .debs of `make deb`: lintian-clean, each package holding what it should, and the
debian/ directory in step with the project (version, conffile, man pages).

Installing them in clean Debian chroots under a real smtpd is tests/e2e/deb.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import tomllib

import opensmtpd
from opensmtpd.consul.config import KEYS, load

from .builds import DEB_DIR, REPO, built_debs

# lintian tags kept, with the reason (none at warning level or above today):
#   I spare-manual-page: filter-prometheus(8) documents an executable smtpd runs from
#     /usr/libexec/opensmtpd, which lintian does not count as a command (nor Debian's
#     own table-passwd(5)).
ALLOWED_TAGS = {"spare-manual-page"}

EXPECTED = {  # package -> paths it must ship (mode checked for executables)
    "python3-opensmtpd": ["./usr/bin/opensmtpd-table",
                          "./usr/lib/python3/dist-packages/opensmtpd/table/__init__.py",
                          "./usr/share/man/man1/opensmtpd-table.1.gz"],
    "opensmtpd-table-consul": ["./usr/libexec/opensmtpd/table-consul",
                               "./usr/bin/table-consul -> ../libexec/opensmtpd/table-consul",
                               "./etc/mail/table-consul.conf",
                               "./usr/share/man/man5/table-consul.5.gz"],
    "opensmtpd-filter-prometheus": [
        "./usr/libexec/opensmtpd/filter-prometheus",
        "./usr/share/opensmtpd-filter-prometheus/grafana/opensmtpd-dashboard.json",
        "./usr/share/opensmtpd-filter-prometheus/prometheus/opensmtpd-alerts.yml",
        "./usr/share/man/man8/filter-prometheus.8.gz"],
    "opensmtpd-table-procexec": ["./usr/libexec/opensmtpd/table-procexec",
                                 "./usr/share/man/man5/table-procexec.5.gz"],
}


def _contents(deb: Path) -> dict[str, str]:
    """path (with ' -> target' for links) -> mode string, from dpkg-deb -c."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    entries = {}
    for line in out.splitlines():
        mode, _owner, _size, _date, _time, path = line.split(None, 5)
        entries[path] = mode
    return entries


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_lintian_reports_no_error_and_no_unexplained_tag() -> None:
    built_debs()
    lintian = shutil.which("lintian")
    if lintian is None:
        pytest.fail("lintian missing: make deb installs it", pytrace=False)
    changes = sorted(DEB_DIR.glob("*.changes"))
    assert len(changes) == 1, changes
    result = subprocess.run([lintian, "--info", "--display-info", str(changes[0])],
                            capture_output=True, text=True, timeout=600)
    tags = re.findall(r"^([EWIP]): \S+: (\S+)", result.stdout, re.M)
    assert not [t for t in tags if t[0] == "E"], result.stdout
    assert {name for _, name in tags} <= ALLOWED_TAGS, result.stdout


def test_each_package_ships_its_files_and_nothing_of_the_others() -> None:
    seen: dict[str, str] = {}
    for deb in built_debs():
        package = _field(deb, "Package")
        entries = _contents(deb)
        for path in EXPECTED[package]:
            assert path in entries, f"{package} lacks {path}: {sorted(entries)}"
        for path, mode in entries.items():
            if not path.endswith("/") and ("/libexec/opensmtpd/" in path
                                            or path.startswith("./usr/bin/")):
                assert mode[0] == "l" or mode == "-rwxr-xr-x", (path, mode)
            if not path.endswith("/"):
                assert path not in seen, f"{path} in {package} and {seen[path]}"
                seen[path] = package
        assert _field(deb, "Architecture") == "all"
        assert _field(deb, "Version") == opensmtpd.__version__


def test_dependencies_come_from_debian() -> None:
    depends = {_field(deb, "Package"): _field(deb, "Depends") for deb in built_debs()}
    assert "python3-httpx" in depends["opensmtpd-table-consul"]
    assert "python3-prometheus-client" in depends["opensmtpd-filter-prometheus"]
    for package in ("opensmtpd-table-consul", "opensmtpd-filter-prometheus",
                    "opensmtpd-table-procexec"):
        assert f"python3-opensmtpd (= {opensmtpd.__version__})" in depends[package]
        assert re.search(r"(^|, )opensmtpd(,|$)", depends[package]), depends[package]
    # the library needs nothing but Python 3.10+: no httpx, no prometheus_client
    assert depends["python3-opensmtpd"] == "python3:any (>= 3.10~)"


def test_the_library_package_holds_no_test_harness() -> None:
    library = next(d for d in built_debs() if d.name.startswith("python3-opensmtpd_"))
    names = [Path(p).name for p in _contents(library)]
    assert not [n for n in names if n.startswith("testing")], names


def test_versions_agree() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    changelog = (REPO / "debian" / "changelog").read_text().split("\n", 1)[0]
    assert changelog.startswith(f"py-opensmtpd ({opensmtpd.__version__}) ")
    assert pyproject == opensmtpd.__version__


def test_every_executable_has_a_man_page() -> None:
    pages = {p.name.rsplit(".", 1)[0] for p in (REPO / "man").iterdir()}
    executables = {p.name for p in (REPO / "debian" / "libexec").iterdir()}
    scripts = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
    assert executables | scripts == pages


def test_the_shipped_conffile_is_every_default_commented_out(tmp_path: Path) -> None:
    """/etc/mail/table-consul.conf: uncommenting every setting changes nothing, and every
    key is there (so the example cannot drift from the code)."""
    text = (REPO / "debian" / "table-consul.conf").read_text()
    settings = re.findall(r"^#(\w+) =(.*)$", text, re.M)
    names = [name for name, _ in settings]
    assert sorted(names) == sorted(KEYS) and len(set(names)) == len(names)
    defaults = load(None, env={})
    assert replace(load(REPO / "debian" / "table-consul.conf", env={}), path=None) == defaults
    active = tmp_path / "table-consul.conf"
    active.write_text("".join(f"{name} ={value}\n" for name, value in settings))
    config = load(active, env={})
    assert set(config.origin) == set(KEYS)  # every value read from the file
    assert replace(config, path=None) == defaults
