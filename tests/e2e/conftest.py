"""Shared fixtures for the e2e tier: real smtpd 6.8 (host), 7.6 (trixie chroot) and 7.9
(sid chroot).

These tests need root, Debian 12's opensmtpd on the host and the chroots built by
`make chroot` (see .ci/run). Missing any of them is a failure, never a skip.

Fixtures per generation: ``host_root`` (6.8, imsg tables), ``chroot_root`` (7.6) and
``sid_root`` (7.9), both line-protocol tables; ``any_root`` runs a test on all three,
``line_root`` on the line-protocol generations (7.6 and 7.9, which also offer inbound
TLS, hence AUTH).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from harness.prometheus import Prometheus
from harness.smtpd import Root, Smtpd, chroot_mounts, free_port
from harness.syslog import Syslog

from .paths import REPO

CHROOT = Path(os.environ.get("PYOS_CHROOT", REPO / "build" / "trixie"))
SID_CHROOT = Path(os.environ.get("PYOS_SID_CHROOT", REPO / "build" / "sid"))
ROOTS = {"6.8": "host_root", "7.6": "chroot_root", "7.9": "sid_root"}
# Per test session: several sessions may run at once on one machine (they take turns
# with smtpd through the harness's lock, but must not share files).
WORK_INSIDE = f"/var/tmp/pyos-e2e-{os.getpid()}"
LIB_INSIDE = f"/opt/pyos-e2e-{os.getpid()}/lib"


def _require(condition: bool, why: str) -> None:
    if not condition:
        pytest.fail(f"e2e prerequisite missing: {why}", pytrace=False)


def _version(root: Root) -> str:
    cmd = ["/usr/sbin/smtpd", "-h"]
    if root.chrooted:
        cmd = ["chroot", str(root.path), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return (out.stdout + out.stderr).split("OpenSMTPD ", 1)[-1].split()[0]


def _prepare(root: Root) -> None:
    """Put the library where user opensmtpd can import it, and a world-readable workdir."""
    root.install_library()
    work = root.host(WORK_INSIDE)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work.chmod(0o755)


def _cleanup(root: Root) -> None:
    shutil.rmtree(root.host(WORK_INSIDE), ignore_errors=True)
    shutil.rmtree(root.host(LIB_INSIDE).parent, ignore_errors=True)


@pytest.fixture(scope="session")
def host_root() -> Iterator[Root]:
    _require(os.geteuid() == 0, "must run as root (smtpd needs it)")
    _require(Path("/usr/sbin/smtpd").exists(), "apt-get install opensmtpd opensmtpd-extras")
    root = Root(Path("/"), "6.8", LIB_INSIDE)
    _require(_version(root).startswith("6.8"), f"host smtpd is {_version(root)}, expected 6.8")
    _prepare(root)
    yield root
    _cleanup(root)


def _chroot_root(path: Path, version: str, suite: str) -> Iterator[Root]:
    _require(os.geteuid() == 0, "must run as root (smtpd and chroot need it)")
    _require((path / "usr/sbin/smtpd").exists(), f"no {suite} chroot at {path}: make chroot")
    root = Root(path.resolve(), version, LIB_INSIDE)
    with chroot_mounts(root.path):  # shared with other sessions; the last one unmounts
        found = _version(root)
        _require(found.startswith(version), f"{suite} chroot smtpd is {found}, expected {version}")
        _prepare(root)
        try:
            yield root
        finally:
            _cleanup(root)


@pytest.fixture(scope="session")
def chroot_root() -> Iterator[Root]:
    """smtpd 7.6 (Debian 13 trixie)."""
    yield from _chroot_root(CHROOT, "7.6", "trixie")


@pytest.fixture(scope="session")
def sid_root() -> Iterator[Root]:
    """smtpd 7.9 (Debian sid)."""
    yield from _chroot_root(SID_CHROOT, "7.9", "sid")


def _root(request: pytest.FixtureRequest) -> Root:
    return request.getfixturevalue(ROOTS[request.param])  # type: ignore[no-any-return]


@pytest.fixture(params=list(ROOTS))
def any_root(request: pytest.FixtureRequest) -> Root:
    return _root(request)


@pytest.fixture(params=["7.6", "7.9"])
def line_root(request: pytest.FixtureRequest) -> Root:
    """The generations that run line-protocol tables and offer inbound TLS (hence AUTH)."""
    return _root(request)


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Callable[[Root], tuple[Path, str]]:
    """A fresh directory (host path, path inside the root) readable by smtpd's users."""

    def make(root: Root) -> tuple[Path, str]:
        inside = f"{WORK_INSIDE}/{request.node.name.replace('[', '-').replace(']', '')}"
        host = root.host(inside)
        shutil.rmtree(host, ignore_errors=True)
        host.mkdir(parents=True)
        host.chmod(0o755)
        return host, inside
    return make


@pytest.fixture
def smtpd(tmp_path: Path) -> Iterator[Callable[..., Smtpd]]:
    started: list[Smtpd] = []

    def make(root: Root, conf: str, backends: dict[str, str] | None = None,
             env: dict[str, str] | None = None, syslog: Syslog | None = None) -> Smtpd:
        """An smtpd for ``conf``; ``backends`` (table-NAME -> program) are installed
        while it holds the root's lock and removed when it stops; ``env`` is added to
        smtpd's environment (its tables and filters inherit it); with ``syslog`` (the
        ``mail_log`` fixture) it runs daemonized and logs there."""
        server = Smtpd(root, conf, tmp_path / f"smtpd-{root.name}-{len(started)}.log",
                       {**root.smtpd_env(), **(env or {})}, backends=backends or {},
                       syslog=syslog)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def mail_log(tmp_path: Path) -> Iterator[Syslog]:
    """A private rsyslogd writing mail.* to a file (for a daemonized smtpd)."""
    _require(Path("/usr/sbin/rsyslogd").exists(), "apt-get install rsyslog (make deps)")
    server = Syslog(tmp_path / "syslog")
    try:
        yield server
    finally:
        server.stop()


class Sink:
    """An SMTP server on loopback that records every envelope it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),  # type: ignore[attr-defined]
                              envelope.content))  # type: ignore[attr-defined]
        return "250 OK"

    def recipients(self) -> list[str]:
        return [rcpt for _, rcpts, _ in self.messages for rcpt in rcpts]


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    server.controller.start()
    try:
        yield server
    finally:
        server.controller.stop()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, int]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: dict[str, int]) -> Prometheus:
        started.append(Prometheus(tmp_path, targets))
        return started[-1]

    yield start
    for server in started:
        server.stop()
