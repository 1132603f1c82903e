"""Walk one page, one route, in a clean chroot: each step as the page gives it, in order.

The chroot is a copy of a fresh debootstrap of the page's suite (minbase + opensmtpd, as
a Debian machine with OpenSMTPD installed); the page runs as root in a clone of the
checkout at CLONE, holding the .debs of `make deb` in build/deb and the wheel and sdist
of `make dist` in build/dist. smtpd is started the way the page says (``service opensmtpd
restart``: Debian's init script, start-stop-daemon, a daemonized smtpd): once it runs, it
must still run after every later step, or the walk fails there — a line that makes smtpd
exit is a broken page.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.smtpd import chrooted_pids as harness_chrooted_pids

from .markdown import Page, Step

CLONE = "/root/py-opensmtpd"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
SMTPD = "/usr/sbin/smtpd"
# How the pages start smtpd: Debian's init script through service(8), which runs
# `systemctl restart opensmtpd` on a systemd host and the init script in a chroot.
STARTS = re.compile(r"\bservice opensmtpd (re)?start\b")


def chrooted_pids(root: Path) -> list[int]:
    """Processes whose root is ``root`` or below it."""
    return harness_chrooted_pids(root, below=True)


def smtpd_pids(root: Path) -> list[int]:
    pids = []
    for pid in chrooted_pids(root):
        try:
            if Path(f"/proc/{pid}/exe").resolve() == root.resolve() / SMTPD.lstrip("/"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def stop_chrooted(root: Path) -> None:
    """Stop every process whose root is this page's chroot (all started by the walk)."""
    for sig, wait in ((signal.SIGTERM, 6.0), (signal.SIGKILL, 6.0)):
        pids = chrooted_pids(root)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while chrooted_pids(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not chrooted_pids(root):
            return


@dataclass
class Walk:
    page: Page
    route: str
    root: Path
    transcript: list[str] = field(default_factory=list)
    smtpd_seen: bool = False

    def where(self, step: Step) -> str:
        return f"{self.page.path.name}:{step.line}"

    def run(self) -> None:
        for step in self.page.walk(self.route):
            self.step(step)
            if STARTS.search(step.text):
                # as a person would: wait until smtpd answers on its control socket (its
                # start goes on after the init script returns, tables and filters first)
                self.shell(step, "docs-test-wait 30 smtpctl show status")
                self.smtpd_seen = True
            self.check_smtpd(step)
        if self.smtpd_seen:
            time.sleep(1.0)  # an exit right after the last step (a filter that cannot start)
            self.check_smtpd(None)

    def step(self, step: Step) -> None:
        self.transcript.append(f"--- {self.where(step)} ({step.kind}"
                               f"{' ' + step.target if step.target else ''})")
        if step.kind in ("sh", "run"):
            self.shell(step, step.text)
        elif step.kind in ("file", "append"):
            target = self.root / step.target.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a" if step.kind == "append" else "w", encoding="utf-8") as out:
                out.write(step.text)
            if step.mode:
                target.chmod(int(step.mode, 8))
            self.transcript.append(step.text)
            if target.name == "smtpd.conf":
                self.shell(step, f"{SMTPD} -n -f {step.target}")
        else:  # pragma: no cover - parse() makes no other kind a walk step
            raise AssertionError(step.kind)

    def shell(self, step: Step, script: str) -> None:
        self.transcript.append(f"$ {script.rstrip()}")
        result = subprocess.run(["chroot", str(self.root), "/bin/sh", "-ec",
                                 f"cd {CLONE}\n{script}"], capture_output=True, text=True,
                                env=ENV, stdin=subprocess.DEVNULL, timeout=600)
        output = (result.stdout + result.stderr).rstrip()
        if output:
            self.transcript.append(output)
        if result.returncode != 0:
            raise AssertionError(
                f"{self.where(step)} (route {self.route}): exited {result.returncode}:\n"
                f"{script.rstrip()}\n--- output:\n{output[-4000:]}\n"
                f"--- walk so far:\n{self.tail()}")

    def check_smtpd(self, step: Step | None) -> None:
        running = bool(smtpd_pids(self.root))
        if running:
            self.smtpd_seen = True
        elif self.smtpd_seen:
            after = f"after {self.where(step)}" if step else "at the end of the walk"
            raise AssertionError(f"{self.page.path.name} (route {self.route}): smtpd is no "
                                 f"longer running {after}\n--- walk so far:\n{self.tail()}")

    def tail(self, lines: int = 80) -> str:
        return "\n".join("\n".join(self.transcript).splitlines()[-lines:]) + self.processes()

    def processes(self) -> str:
        """What runs in the chroot now (minbase has no ps)."""
        shown = []
        for pid in chrooted_pids(self.root):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            shown.append(f"  {pid} {argv.decode(errors='replace').strip()}")
        return "\n--- processes in the chroot:\n" + ("\n".join(shown) or "  none")
