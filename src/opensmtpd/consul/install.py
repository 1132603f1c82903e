"""Install table-consul where smtpd looks for table backends (PATH_LIBEXEC).

smtpd runs ``PATH_LIBEXEC/table-<backend>`` as user ``opensmtpd`` (Debian:
``/usr/libexec/opensmtpd``, table-protocols.md §1.1), so ``table aliases
consul:/etc/mail/table-consul.conf`` needs an executable ``table-consul`` there, an
interpreter that user can run (``/usr/bin/python3``), this package and httpx importable
by it (Debian: ``apt-get install python3-httpx``). A virtualenv under /root is not
readable by that user: the package is copied to a world-readable directory instead.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # the opensmtpd package
LIBEXEC = "/usr/libexec/opensmtpd"
PYTHON = "/usr/bin/python3"
LIBRARY = "/usr/local/lib/py-opensmtpd"


def wrapper_source(python: str = PYTHON, library: str | None = None) -> str:
    """The executable smtpd starts: a shebang, the library path, main().

    With ``library``, the interpreter runs isolated (-I): the environment smtpd passes
    down cannot put other modules first on the path.
    """
    path = f"sys.path.insert(0, {library!r})\n" if library else ""
    isolated = " -I" if library else ""
    return (f"#!{python}{isolated}\n"
            "# table-consul for smtpd: installed by 'table-consul install'\n"
            f"import sys\n{path}"
            "from opensmtpd.consul.main import main\n\n"
            "sys.exit(main())\n")


def copy_library(target: str | Path) -> Path:
    """Copy the opensmtpd package to ``target``/opensmtpd, readable by every user."""
    target = Path(target)
    destination = target / "opensmtpd"
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(PACKAGE, destination, ignore=shutil.ignore_patterns("__pycache__"))
    for path in (target, *target.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return destination


def install(libexec: str = LIBEXEC, python: str = PYTHON,
            library: str | None = LIBRARY) -> Path:
    """Write ``libexec``/table-consul (and copy the package to ``library`` unless None)."""
    if library is not None:
        copy_library(library)
    target = Path(libexec) / "table-consul"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(wrapper_source(python, library))
    target.chmod(0o755)
    return target


def missing_modules(python: str, library: str | None) -> list[str]:
    """The modules ``python`` cannot import (httpx comes from Debian's python3-httpx)."""
    missing = []
    for module in ("httpx", "opensmtpd.consul.main"):
        code = (f"import sys; sys.path.insert(0, {library!r}); " if library else "") + \
            f"import {module}"
        result = subprocess.run([python, "-c", code], capture_output=True, timeout=60,
                                check=False)
        if result.returncode != 0:
            missing.append(module)
    return missing
