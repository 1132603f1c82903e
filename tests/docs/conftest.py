"""The docs tier: each page's walk-through in a clean chroot of its Debian suite.

Per session, one fresh debootstrap per suite the selected walks need (minbase +
opensmtpd, all suites at once, through tests/e2e/deb's DebChroot), prepared once (see
``prepare_base``); per walk, an overlay on it (the base stays untouched), deleted
afterwards.
Needs root and the network; a missing prerequisite fails, never skips.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from artifacts.builds import built_debs, built_dist
from e2e.deb.chroots import SERIES, DebChroot, mounts_under

from .markdown import REPO
from .walk import CLONE, stop_chrooted

BUILD = REPO / "build"
LOCK = "/tmp/pyos-docs-tier.lock"

# The runner's own helpers inside the chroot, for its `run` steps.
HELPERS = {
    # docs-test-wait SECONDS COMMAND...: retry COMMAND until it succeeds (bounded)
    "docs-test-wait": """#!/bin/sh
limit=$(( $1 * 5 )); shift
i=0
while [ "$i" -lt "$limit" ]; do "$@" >/dev/null 2>&1 && exit 0; i=$((i + 1)); sleep 0.2; done
echo "docs-test-wait: still failing after the time allowed: $*" >&2
"$@"
""",
    # docs-test-smtp PORT FROM TO: one message over SMTP to 127.0.0.1: prints "accepted",
    # or the refusal (code and text) and exits 1
    "docs-test-smtp": """#!/usr/bin/python3
import smtplib, sys
port, sender, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3]
body = f"Subject: docs-test\\r\\nTo: {rcpt}\\r\\n\\r\\nhello\\r\\n"
try:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(sender, [rcpt], body)
except smtplib.SMTPRecipientsRefused as exc:
    for code, text in exc.recipients.values():
        print(code, text.decode(errors="replace"))
    sys.exit(1)
except smtplib.SMTPResponseException as exc:
    print(exc.smtp_code, exc.smtp_error.decode(errors="replace"))
    sys.exit(1)
print("accepted")
""",
    # docs-test-metrics URL: print what an HTTP GET returns (no curl in minbase)
    "docs-test-metrics": """#!/usr/bin/python3
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
""",
    # docs-test-consul: a Consul dev agent on 127.0.0.1:8500 (the pages' address), in the
    # background, ready when it takes a write; Consul itself comes from `make consul`
    "docs-test-consul": """#!/bin/sh
set -e
start-stop-daemon --start --background --make-pidfile --pidfile /run/docs-test-consul.pid \\
  --exec /usr/local/bin/consul -- agent -dev -node docs-test -bind 127.0.0.1 \\
  -client 127.0.0.1 -dns-port -1 -grpc-port -1
exec docs-test-wait 30 /usr/local/bin/consul kv put docs-test/ready yes
""",
}
CONSUL = REPO / "build" / "consul" / "usr" / "bin" / "consul"


def prepare_base(chroot: DebChroot) -> None:
    """What a Debian machine has that a fresh debootstrap lacks.

    - package lists (``apt-get update``), and apt answering yes to its own question (the
      pages say ``apt install``, which asks; a person types y);
    - policy-rc.d: packages start no daemon in here (the page starts smtpd itself);
    - /etc/hosts as Debian's installer writes it (``listen on localhost`` resolves it).
    """
    # dpkg without fsync per file, as build chroots and containers do (a walk is thrown
    # away; this machine's disk is shared with other tests)
    (chroot.path / "etc/dpkg/dpkg.cfg.d/docs-test-unsafe-io").write_text("force-unsafe-io\n")
    (chroot.path / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    policy = chroot.path / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (chroot.path / "etc/apt/apt.conf.d/90docs-test").write_text(
        'APT::Get::Assume-Yes "true";\nAcquire::Check-Valid-Until "false";\n')
    local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if local_cas:
        # This machine reaches the network through its own CAs (a TLS-inspecting proxy):
        # the chroot trusts what the host trusts, for apt's and pip's downloads. A machine
        # without local CAs (a CI runner) copies nothing.
        inside = chroot.path / "usr/local/share/ca-certificates"
        inside.mkdir(parents=True, exist_ok=True)
        for ca in local_cas:
            shutil.copy(ca, inside)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", chroot.path / "etc/docs-test-ca.crt")
        (chroot.path / "etc/pip.conf").write_text("[global]\ncert = /etc/docs-test-ca.crt\n")
    chroot.run("apt-get", "update", "-q")


def selected_suites(session: pytest.Session) -> set[str]:
    suites = set()
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "walk" in callspec.params:
            suites.add(callspec.params["walk"].suite)
    return suites


@pytest.fixture(scope="session")
def docs_bases(request: pytest.FixtureRequest) -> Iterator[dict[str, DebChroot]]:
    if os.geteuid() != 0:
        pytest.fail("docs tier prerequisite missing: must run as root (chroot, smtpd)",
                    pytrace=False)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one docs session at a time on this machine
        suites = sorted(selected_suites(request.session)) or ["bookworm"]
        bases = {suite: DebChroot(suite, BUILD / f"docs-{suite}-base",
                                  BUILD / "docs-cache" / suite) for suite in suites}
        # PYOS_DOCS_REUSE_BASE=1 (development only): keep a base prepared by an earlier
        # session (walks never change it: each works on a copy)
        reuse = os.environ.get("PYOS_DOCS_REUSE_BASE") == "1"
        fresh = {suite: base for suite, base in bases.items()
                 if not (reuse and (base.path / ".docs-test-prepared").exists())}
        try:
            for base in fresh.values():
                base.start_bootstrap()
            for base in fresh.values():
                base.wait()
            for base in fresh.values():
                prepare_base(base)
                (base.path / ".docs-test-prepared").touch()
            yield bases
        finally:
            for base in bases.values():
                base.abort()


def make_clone(root: Path) -> None:
    """The checkout as a clone has it (tracked and new files), with build/deb and
    build/dist as `make deb` and `make dist` left them."""
    clone = root / CLONE.lstrip("/")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    for directory, artifacts in (("build/deb", built_debs()), ("build/dist", built_dist())):
        (clone / directory).mkdir(parents=True, exist_ok=True)
        for artifact in artifacts:
            shutil.copy2(artifact, clone / directory)


@pytest.fixture
def page_root(docs_bases: dict[str, DebChroot], request: pytest.FixtureRequest
              ) -> Iterator[Path]:
    walk = request.node.callspec.params["walk"]
    base = docs_bases[walk.suite]
    # The page's chroot: an overlay on the base (the base is never written), its upper
    # layer deleted afterwards — as clean as a copy, without copying 400 MB per walk.
    layers = BUILD / f"docs-{walk.suite}-page"
    merged = layers / "root"
    if mounts_under(layers):
        pytest.fail(f"{layers} has mounts: another session using it? Not deleting it.",
                    pytrace=False)
    if layers.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(layers)], check=True,
                       timeout=600)
    for name in ("upper", "work", "root"):
        (layers / name).mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base.path},upperdir={layers / 'upper'},"
                    f"workdir={layers / 'work'}", str(merged)], check=True, timeout=60)
    copy = DebChroot(walk.suite, merged, base.cache)
    try:
        make_clone(copy.path)
        if not CONSUL.exists():
            pytest.fail(f"docs tier prerequisite missing: {CONSUL} (make consul)",
                        pytrace=False)
        shutil.copy2(CONSUL, copy.path / "usr/local/bin/consul")
        for name, text in HELPERS.items():
            helper = copy.path / "usr/local/bin" / name
            helper.write_text(text)
            helper.chmod(0o755)
        copy.mount()
        yield copy.path
    finally:
        stop_chrooted(copy.path)
        copy.unmount()
        if subprocess.run(["umount", str(merged)], timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(merged)], timeout=60, check=False)
        if not mounts_under(layers):
            subprocess.run(["rm", "-rf", "--one-file-system", str(layers)], check=False,
                           timeout=600)


assert set(SERIES) >= {"bookworm", "trixie", "sid"}
