"""A private syslog for a daemonized smtpd: Debian's rsyslogd writing mail.* to a file.

A daemonized smtpd, its tables and filters log with syslog(3), which writes to /dev/log.
The host's /dev/log belongs to the machine (absent here, journald's on a systemd host;
other sessions' smtpd may log there), so ours is reached through a private mount
namespace: ``private_dev_script`` mounts a small /dev (null, zero, random, urandom, full,
tty and ``log`` = this rsyslogd's socket) over the root's /dev for the processes started
in it, and nobody else sees it.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


class Syslog:
    """One rsyslogd (``-n``: no fork; stopped by its PID) with its own socket and file."""

    def __init__(self, directory: Path) -> None:
        rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        if not Path(rsyslogd).exists():
            raise RuntimeError("rsyslogd missing: apt-get install rsyslog (make deps)")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory / "log"
        self.log_path = directory / "mail.log"
        self.conf = directory / "rsyslog.conf"
        self.conf.write_text(
            f'global(workDirectory="{directory}")\n'
            'module(load="imuxsock" SysSock.Use="off")\n'
            f'input(type="imuxsock" Socket="{self.socket}")\n'
            f'mail.* action(type="omfile" file="{self.log_path}")\n')
        self.stderr = open(directory / "rsyslogd.stderr", "wb")  # noqa: SIM115 (stop)
        self.process = subprocess.Popen(
            [rsyslogd, "-n", "-f", str(self.conf), "-i", str(directory / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not start: {self.errors()}")
            time.sleep(0.05)

    def errors(self) -> str:
        return (self.directory / "rsyslogd.stderr").read_text(errors="replace")

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def private_dev_script(self, dev: Path, scratch: Path) -> str:
        """Shell lines mounting our /dev over ``dev`` (run in a private mount namespace)."""
        scratch.mkdir(parents=True, exist_ok=True)
        lines = ["set -e"]
        for name in (*DEVICES, "log"):
            (scratch / name).touch()
            source = self.socket if name == "log" else Path("/dev") / name
            lines.append(f"mount --bind {shlex.quote(str(source))} "
                         f"{shlex.quote(str(scratch / name))}")
        lines.append(f"mount --rbind {shlex.quote(str(scratch))} {shlex.quote(str(dev))}")
        return "\n".join(lines)

    def run(self, argv: list[str], scratch: Path, **kwargs: object,
            ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` (no smtpd) where /dev/log is this syslog, stderr on /dev/null as a
        daemonized smtpd leaves it."""
        script = "\n".join((self.private_dev_script(Path("/dev"), scratch), 'exec "$@"'))
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script, "sh", *argv], stderr=subprocess.DEVNULL,
                              check=False, timeout=60, **kwargs)  # type: ignore[call-overload]

    def wait_for(self, needle: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        with contextlib.suppress(OSError):
            self.stderr.close()
