"""The artifacts `make deb` and `make dist` build, found and checked for freshness.

A missing or stale artifact is a failure that says which make target to run, never a
skip: testing yesterday's .deb would prove nothing about today's tree.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEB_DIR = Path(os.environ.get("PYOS_DEB_DIR", REPO / "build" / "deb"))
DIST_DIR = Path(os.environ.get("PYOS_DIST_DIR", REPO / "build" / "dist"))
PACKAGES = ("python3-opensmtpd", "opensmtpd-table-consul", "opensmtpd-filter-prometheus",
            "opensmtpd-table-procexec")
SOURCES = ("src", "debian", "man", "ops", "pyproject.toml", "README.md", "LICENSE")


def _newest_source() -> tuple[float, Path]:
    newest = (0.0, REPO)
    for name in SOURCES:
        top = REPO / name
        paths = [top] if top.is_file() else [p for p in top.rglob("*")
                                               if p.is_file() and "__pycache__" not in p.parts]
        for path in paths:
            newest = max(newest, (path.stat().st_mtime, path))
    return newest


def _fresh(artifacts: list[Path], target: str) -> list[Path]:
    mtime, source = _newest_source()
    stale = [a for a in artifacts if a.stat().st_mtime < mtime]
    if stale:
        pytest.fail(f"{stale[0]} is older than {source.relative_to(REPO)}: run 'make {target}'",
                    pytrace=False)
    return artifacts


def built_debs() -> list[Path]:
    """The four .debs of build/deb, one per package."""
    debs = []
    for package in PACKAGES:
        found = sorted(DEB_DIR.glob(f"{package}_*_all.deb"))
        if len(found) != 1:
            pytest.fail(f"{DEB_DIR}: expected one {package}_*_all.deb, found {len(found)}: "
                        "run 'make deb'", pytrace=False)
        debs.append(found[0])
    return _fresh(debs, "deb")


def built_dist() -> tuple[Path, Path]:
    """The wheel and the sdist of build/dist."""
    wheels, sdists = sorted(DIST_DIR.glob("*.whl")), sorted(DIST_DIR.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        pytest.fail(f"{DIST_DIR}: expected one wheel and one sdist, found "
                    f"{[p.name for p in wheels + sdists]}: run 'make dist'", pytrace=False)
    wheel, sdist = _fresh([wheels[0], sdists[0]], "dist")
    return wheel, sdist
