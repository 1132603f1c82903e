"""Optional dependencies (pip extras) and the one-line self-test of every product.

``pip install py-opensmtpd`` brings no dependency: a table backend or a filter needs none.
table-consul's Consul store needs httpx (extra ``consul``; Debian: python3-httpx) and
filter-prometheus needs prometheus_client (extra ``prometheus``; Debian:
python3-prometheus-client). Without one, the product says so in one line, not a traceback.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from . import __version__

EXTRAS = {  # module -> (pip extra, Debian package)
    "httpx": ("consul", "python3-httpx"),
    "prometheus_client": ("prometheus", "python3-prometheus-client"),
}


class MissingExtra(ImportError):
    """An optional dependency cannot be imported; the message says what to install."""

    def __init__(self, module: str, cause: ImportError) -> None:
        extra, debian = EXTRAS[module]
        what = ("is not installed" if getattr(cause, "name", None) == module
                else f"cannot be imported ({cause})")
        super().__init__(f"{module} {what}: pip install 'py-opensmtpd[{extra}]' "
                         f"(Debian: apt-get install {debian})")


def require(module: str) -> None:
    """Import ``module`` (a key of EXTRAS), or raise MissingExtra."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(module, exc) from None


def self_test(program: str, needs: tuple[str, ...] = (), wants: tuple[str, ...] = ()) -> int:
    """What ``PROGRAM --self-test`` does: one line on stdout and 0 when the program can
    run here (as this user, with this interpreter), else one line on stderr and 1.

    ``needs``: modules it cannot run without; ``wants``: modules only some settings use.
    """
    for module in needs:
        try:
            require(module)
        except MissingExtra as exc:
            print(f"{program}: {exc}", file=sys.stderr)
            return 1
    line = (f"{program} {__version__}: python {sys.version.split()[0]} ({sys.executable}), "
            f"library {Path(__file__).resolve().parent}")
    for module in wants:
        try:
            require(module)
        except MissingExtra:
            extra = EXTRAS[module][0]
            line += f"; without {module} (extra [{extra}])"
    print(line)
    return 0
