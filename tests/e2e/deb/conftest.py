"""The .debs of `make deb` installed the way an admin does, in clean Debian chroots.

One chroot per suite (PYOS_DEB_SUITES, default Debian 12, 13 and sid: smtpd 6.8, 7.6 and
7.9), debootstrapped fresh for each test session, all at once; `apt-get install
./*.deb` takes the dependencies from Debian's archive (nothing from PyPI, no virtualenv).
Needs root and the network; a missing prerequisite fails, never skips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from artifacts.builds import built_debs

from ..paths import REPO
from .chroots import SERIES, DebChroot

SUITES = os.environ.get("PYOS_DEB_SUITES", "bookworm trixie sid").split()


@pytest.fixture(scope="session")
def deb_chroots() -> Iterator[dict[str, DebChroot]]:
    if os.geteuid() != 0:
        pytest.fail("e2e prerequisite missing: must run as root (chroot, smtpd)",
                    pytrace=False)
    unknown = set(SUITES) - set(SERIES)
    if unknown:
        pytest.fail(f"PYOS_DEB_SUITES: unknown suite(s) {sorted(unknown)}; known: "
                    f"{', '.join(SERIES)}", pytrace=False)
    debs = built_debs()
    chroots = {suite: DebChroot(suite, REPO / "build" / f"deb-{suite}",
                                REPO / "build" / "deb-cache" / suite) for suite in SUITES}
    try:
        for chroot in chroots.values():
            chroot.start_bootstrap()
        for chroot in chroots.values():
            chroot.wait()
        for chroot in chroots.values():
            chroot.mount()
            chroot.start_install(debs)
        for chroot in chroots.values():
            chroot.wait()
        yield chroots
    finally:
        for chroot in chroots.values():
            chroot.abort()  # a debootstrap or apt still running after another one failed
            chroot.unmount()


@pytest.fixture(params=SUITES)
def deb_chroot(request: pytest.FixtureRequest,
               deb_chroots: dict[str, DebChroot]) -> DebChroot:
    return deb_chroots[request.param]

