"""``opensmtpd-table install procexec|consul|prometheus``: for pip users, put a product
where smtpd looks for it (with Debian's packages there is nothing to do).

smtpd runs ``PATH_LIBEXEC/table-<backend>`` and ``filter NAME proc-exec "filter-x"`` as
``PATH_LIBEXEC/filter-x``, as its unprivileged user (``opensmtpd`` on Debian,
table-protocols.md §1.1; filter-protocol.md §0), so what is installed there must not
depend on anything that user cannot read — a virtualenv under /root, for one. Hence no
symlink to the console script: the package is copied to a world-readable directory, and
the launcher is a short Python script run by a system interpreter with ``-I`` (smtpd's
PYTHONPATH and user site-packages do not apply to it; a bridged child still inherits
smtpd's environment unchanged). Both are swapped in atomically. The install is checked
by running the launcher as smtpd's user (``--self-test``: it imports the product and what
it needs, e.g. prometheus_client); a launcher that user cannot run is removed again.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from . import __version__
from .procexec.cli import UsageError
from .procexec.cli import parse_args as bridge_args
from .procexec.settings import PROTOCOLS
from .table.wire.procexec2020 import FORMS

PACKAGE = Path(__file__).resolve().parent  # the opensmtpd package
SMTPD_CANDIDATES = ("/usr/sbin/smtpd", "/usr/local/sbin/smtpd")
# configure.ac: $libexecdir/opensmtpd (portable), $libexecdir/smtpd (OpenBSD); smtpd.h's
# fallback is /usr/local/libexec/smtpd.
KNOWN_LIBEXEC = ("/usr/libexec/opensmtpd", "/usr/local/libexec/opensmtpd",
                 "/usr/libexec/smtpd", "/usr/local/libexec/smtpd")
SMTPD_USERS = ("opensmtpd", "_smtpd")  # Debian, OpenBSD
DEFAULT_LIB = "/usr/local/lib/py-opensmtpd"
DEFAULT_PYTHON = "/usr/bin/python3"
_TABLE_PATH = re.compile(rb"\0(/[\x21-\x7e]+?)/table-%s\0")


@dataclass(frozen=True)
class Product:
    kind: str  # "table" or "filter": the executable is KIND-NAME
    module: str  # whose main(argv) the launcher calls
    usage: str  # the smtpd.conf line, {name} the backend name
    what: str


PRODUCTS = {
    "procexec": Product("table", "opensmtpd.procexec.cli",
                        'table NAME "{name}:/absolute/path/to/table [ARGS...]"',
                        "the table-procexec bridge (smtpd <= 7.5)"),
    "consul": Product("table", "opensmtpd.consul.main",
                      "table NAME {name}:/etc/mail/table-consul.conf",
                      "tables from Consul KV or the embedded store"),
    "prometheus": Product("filter", "opensmtpd.prometheus.main",
                          'filter NAME proc-exec "filter-{name} -exporter 127.0.0.1:13742"',
                          "the Prometheus exporter filter"),
}

LAUNCHER = """\
#!{python}{flags}
# {executable}: {what} of py-opensmtpd {version}, written by
# `opensmtpd-table install {product}`. smtpd runs it for
#     {usage}
{where}import sys
{path}
from {module} import main

sys.exit(main([*{options!r}, *sys.argv[1:]]))
"""


def launcher_source(product: str, python: str = DEFAULT_PYTHON, lib: str | None = None,
                    options: Sequence[str] = (), name: str | None = None) -> str:
    """The launcher's text. With ``lib``, the interpreter runs isolated (-I) and imports
    the copy there; without, the package must be importable by ``python`` as it is."""
    spec = PRODUCTS[product]
    name = name or product
    where = (f"# The library is the copy in {lib}.\n# -I: smtpd's PYTHONPATH and user "
             "site-packages do not apply to it.\n" if lib else "")
    return LAUNCHER.format(
        python=python, flags=" -I" if lib else "", executable=f"{spec.kind}-{name}",
        what=spec.what, version=__version__, product=product,
        usage=spec.usage.format(name=name), where=where,
        path=f"\nsys.path.insert(0, {lib!r})" if lib else "", module=spec.module,
        options=list(options))


class InstallError(Exception):
    pass


class InstallUsage(InstallError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InstallUsage(message)


def find_smtpd() -> str | None:
    for path in (*SMTPD_CANDIDATES, shutil.which("smtpd")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def detect_libexec(smtpd: str | None) -> tuple[str, str]:
    """smtpd's PATH_LIBEXEC and how it was found: the ``…/table-%s`` string compiled into
    the binary (what ``strings /usr/sbin/smtpd`` shows), else a known directory."""
    if smtpd is not None:
        try:
            match = _TABLE_PATH.search(Path(smtpd).read_bytes())
        except OSError:
            match = None
        if match is not None:
            return match.group(1).decode(), f"found in {smtpd}"
    for directory in KNOWN_LIBEXEC:
        if os.path.isdir(directory):
            return directory, "a known PATH_LIBEXEC (not found in an smtpd binary)"
    raise InstallError("cannot tell smtpd's PATH_LIBEXEC (no smtpd binary with a table-%s "
                       "path, none of " + ", ".join(KNOWN_LIBEXEC) + "): give --libexec DIR")


def python_version(python: str) -> tuple[int, int]:
    try:
        out = subprocess.run([python, "-I", "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        major, minor = out.split()
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise InstallError(f"cannot run {python}: {exc}") from None
    return int(major), int(minor)


def copy_library(lib: Path) -> None:
    """Replace ``lib/opensmtpd`` with this package, readable by everyone."""
    lib.mkdir(parents=True, exist_ok=True)
    lib.chmod(0o755)
    staging = Path(tempfile.mkdtemp(prefix=".opensmtpd-", dir=lib))
    try:
        shutil.copytree(PACKAGE, staging / "opensmtpd",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for path in (staging, *staging.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        target = lib / "opensmtpd"
        if target.exists():  # swapped by two renames: launchers starting meanwhile find one
            target.rename(staging / "previous")
        (staging / "opensmtpd").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_launcher(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o755)
    temporary.replace(path)


def smtpd_user(wanted: str | None) -> pwd.struct_passwd | None:
    for name in (wanted,) if wanted else SMTPD_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            if wanted:
                raise InstallError(f"no user {wanted!r}") from None
    return None


def check_as(user: pwd.struct_passwd, launcher: Path) -> str:
    """Run the launcher as smtpd's user; its self-test line, or InstallError."""
    try:
        result = subprocess.run([str(launcher), "--self-test"], user=user.pw_uid,
                                group=user.pw_gid, extra_groups=[], cwd="/",
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"user {user.pw_name} cannot run {launcher}: {exc}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InstallError(f"user {user.pw_name} cannot run {launcher}: {detail[0]} "
                           "(the interpreter, --lib and the modules it needs must be "
                           "readable by that user)")
    return result.stdout.strip()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(prog="opensmtpd-table install",
                     description="Install a launcher into smtpd's PATH_LIBEXEC, for a "
                                 "pip-installed py-opensmtpd (Debian's packages need none).")
    parser.add_argument("product", choices=list(PRODUCTS))
    parser.add_argument("--libexec", help="smtpd's PATH_LIBEXEC (default: read from --smtpd)")
    parser.add_argument("--smtpd", help="the smtpd binary to read PATH_LIBEXEC from "
                                        f"(default: {' or '.join(SMTPD_CANDIDATES)})")
    parser.add_argument("--name", help="installs table-NAME or filter-NAME, the name "
                                       "smtpd.conf uses (default: the product's)")
    parser.add_argument("--lib", default=DEFAULT_LIB,
                        help=f"where the library is copied (default {DEFAULT_LIB})")
    parser.add_argument("--python", default=DEFAULT_PYTHON,
                        help=f"interpreter smtpd's user can run (default {DEFAULT_PYTHON})")
    parser.add_argument("--user", help="smtpd's user, to check the install with (default: "
                                       f"the first of {', '.join(SMTPD_USERS)} that exists)")
    group = parser.add_argument_group("bridge options baked into the launcher (procexec)")
    group.add_argument("--protocol", choices=PROTOCOLS)
    group.add_argument("--form-2020", choices=FORMS)
    for option in ("--deadline", "--handshake-timeout", "--max-backoff", "--restart-after"):
        group.add_argument(option)
    args = parser.parse_args(argv)
    args.name = args.name or args.product
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise InstallUsage(f"--name {args.name!r}: letters, digits, '.', '_' and '-' only")
    return args


def bridge_options(args: argparse.Namespace) -> list[str]:
    options = []
    for name in ("protocol", "form_2020", "deadline", "handshake_timeout", "max_backoff",
                 "restart_after"):
        value = getattr(args, name)
        if value is not None:
            options.append(f"--{name.replace('_', '-')}={value}")
    if options and args.product != "procexec":
        raise InstallUsage(f"{options[0].split('=')[0]} is a table-procexec option")
    return options


def install(args: argparse.Namespace) -> list[str]:
    """Do it; the report, one line each."""
    options = bridge_options(args)
    if options:
        try:
            bridge_args([*options, "--self-test"])  # reject bad options before writing
        except UsageError as exc:
            raise InstallError(str(exc)) from None
    if args.libexec:
        libexec, how = args.libexec, "given with --libexec"
    else:
        libexec, how = detect_libexec(args.smtpd or find_smtpd())
    if not os.path.isdir(libexec):
        raise InstallError(f"{libexec} is not a directory")
    version = python_version(args.python)
    if version < (3, 10):
        raise InstallError(f"{args.python} is Python {version[0]}.{version[1]}; 3.10+ needed")
    lib = Path(args.lib).resolve()
    copy_library(lib)
    spec = PRODUCTS[args.product]
    launcher = Path(libexec) / f"{spec.kind}-{args.name}"
    write_launcher(launcher, launcher_source(args.product, args.python, str(lib), options,
                                             args.name))
    report = [f"installed {launcher}",
              f"  PATH_LIBEXEC {libexec} ({how})",
              f"  interpreter {args.python} -I (Python {version[0]}.{version[1]}), library "
              f"copied to {lib}" + (f", options {' '.join(options)}" if options else "")]
    user = smtpd_user(args.user)
    if user is None:
        report.append(f"  not checked: none of the users {', '.join(SMTPD_USERS)} exists "
                      "(give --user)")
    elif os.geteuid() != 0:
        report.append(f"  not checked as user {user.pw_name}: that needs root")
    else:
        try:
            line = check_as(user, launcher)
        except InstallError:
            launcher.unlink()
            raise
        report.append(f"  checked: user {user.pw_name} runs it ({line})")
    report += ["smtpd.conf:", "  " + spec.usage.format(name=args.name)]
    return report


def main(argv: Sequence[str]) -> int:
    try:
        report = install(parse_args(argv))
    except (InstallError, OSError) as exc:
        print(f"opensmtpd-table install: {exc}", file=sys.stderr)
        return 64 if isinstance(exc, InstallUsage) else 1
    print("\n".join(report))
    return 0
