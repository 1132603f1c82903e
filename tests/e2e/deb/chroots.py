"""Clean Debian chroots for the packages: debootstrap minbase + opensmtpd, fresh each run.

Every suite is bootstrapped at once (they wait on the network more than on the CPU), with
a package cache per suite in build/deb-cache, so a run downloads only what changed. A
chroot is deleted only when nothing is mounted in it (a bound /dev would take the host's
device nodes with it), and even then rm never crosses into another filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import IO

MIRROR = "http://deb.debian.org/debian"
SERIES = {"bookworm": "6.8", "trixie": "7.6", "sid": "7.9"}  # the smtpd each suite ships
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
       "DEBIAN_FRONTEND": "noninteractive"}
DEBS_INSIDE = "/tmp/pyos-debs"


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (/proc/mounts escapes spaces as \\040)."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


class DebChroot:
    def __init__(self, suite: str, path: Path, cache: Path) -> None:
        self.suite, self.path, self.cache = suite, path.resolve(), cache.resolve()
        self.series = SERIES[suite]
        self.log_path = self.path.with_name(f"{self.path.name}.log")
        self.mounted: list[Path] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._what = ""

    # --- bootstrap and install, each started for every suite before any is waited for ---

    def start_bootstrap(self) -> None:
        busy = mounts_under(self.path)
        if busy:
            raise RuntimeError(f"{self.path} has mounts ({', '.join(busy)}): is another test "
                               "session using it? Not deleting it.")
        if self.path.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.path)], check=True,
                           timeout=600)
        self.cache.mkdir(parents=True, exist_ok=True)
        self._start("debootstrap", ["debootstrap", "--variant=minbase", "--include=opensmtpd",
                     f"--cache-dir={self.cache}", self.suite, str(self.path), MIRROR])

    def start_install(self, debs: list[Path]) -> None:
        """``apt-get install`` the packages: their dependencies from Debian's archive."""
        policy = self.path / "usr/sbin/policy-rc.d"  # apt starts no daemon in here
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        inside = self.path / DEBS_INSIDE.lstrip("/")
        shutil.rmtree(inside, ignore_errors=True)
        inside.mkdir(parents=True)
        for deb in debs:
            shutil.copy(deb, inside)
        names = " ".join(f"{DEBS_INSIDE}/{deb.name}" for deb in debs)
        # Check-Valid-Until: a mirror may serve a snapshot whose sid Release has expired
        # (this CI's does); how fresh the archive is does not matter here.
        self._start("apt-get install", ["chroot", str(self.path), "/bin/sh", "-c",
                     "apt-get -o Acquire::Check-Valid-Until=false update -q && "
                     f"apt-get install -y -q {names}"])

    def _start(self, what: str, argv: list[str]) -> None:
        self._what = what
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in wait)
        self._log.write(f"\n$ {' '.join(argv)}\n".encode())
        self._log.flush()
        # its own process group (id = its PID): abort() stops dpkg and wget with it
        self._process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=ENV,
                                         start_new_session=True)

    def wait(self, timeout: float = 1200.0) -> None:
        assert self._process is not None and self._log is not None
        try:
            returncode = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(30)
            returncode = -9
        finally:
            self._log.close()
        self._process = None
        if returncode != 0:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{self.suite}: {self._what} failed ({returncode}); "
                               f"{self.log_path}:\n{tail}")

    def abort(self) -> None:
        """Stop what this chroot started and is still running, by its PID."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(60)
            self._process = None
        if self._log is not None:
            self._log.close()

    # --- what smtpd needs: /proc and /dev ---

    def mount(self) -> None:
        for source, target, args in (("proc", "proc", ["-t", "proc"]),
                                     ("/dev", "dev", ["--bind"])):
            where = self.path / target
            if not mounts_under(where):
                subprocess.run(["mount", *args, source, str(where)], check=True, timeout=60)
                self.mounted.append(where)

    def unmount(self) -> None:
        for where in reversed(self.mounted):
            if subprocess.run(["umount", str(where)], timeout=60).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], timeout=60, check=False)
        self.mounted.clear()

    # --- running commands inside ---

    def run(self, *argv: str, user: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        spec = [f"--userspec={user}:{user}"] if user else []
        result = subprocess.run(["chroot", *spec, str(self.path), *argv], capture_output=True,
                                text=True, env=ENV, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"{self.suite}: {' '.join(argv)} exited {result.returncode}:"
                                 f"\n{result.stdout}\n{result.stderr}")
        return result

    def installed(self, package: str) -> bool:
        status = self.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", package, check=False)
        return status.stdout.startswith("ii")

    def known(self, package: str) -> bool:
        """Installed, or removed with its conffiles left (``rc``)."""
        status = self.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", package, check=False)
        return status.returncode == 0 and status.stdout[:2] in ("ii", "rc")
