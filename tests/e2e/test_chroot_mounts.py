"""The harness's chroot mounts: shared by concurrent sessions, undone by the last one.

A scratch directory stands in for the chroot and a scratch directory for /dev, so that a
failure here can never leave the host's /dev bound somewhere pytest will delete.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness.smtpd import chroot_mounts, lock_name


def test_last_user_unmounts(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("e2e prerequisite missing: must run as root (mount)", pytrace=False)
    root, device = tmp_path / "root", tmp_path / "fake-dev"
    (root / "proc").mkdir(parents=True)
    (root / "dev").mkdir()
    device.mkdir()
    (device / "marker").write_text("bound")
    mounts = (("proc", "proc", ("-t", "proc")), (str(device), "dev", ("--bind",)))
    try:
        with chroot_mounts(root, mounts=mounts):
            assert (root / "dev" / "marker").exists() and (root / "proc" / "self").exists()
            with chroot_mounts(root, mounts=mounts):  # a second session, at the same time
                assert (root / "dev" / "marker").exists()
            # the second one ended, but the first still uses the chroot
            assert (root / "dev" / "marker").exists() and (root / "proc" / "self").exists()
        assert not (root / "dev" / "marker").exists()
        assert not (root / "proc" / "self").exists()
        with chroot_mounts(root, mounts=mounts):  # and a later session mounts again
            assert (root / "dev" / "marker").exists()
        assert not (root / "dev" / "marker").exists()
    finally:
        for target in ("dev", "proc"):
            subprocess.run(["umount", "-l", str(root / target)], capture_output=True,
                           check=False)
        for lock in Path("/tmp").glob(f"pyos-chroot-{lock_name(root)}*.lock"):
            lock.unlink()
