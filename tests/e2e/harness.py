"""Run a real OpenSMTPD for tests: Debian 12's 6.8 on the host, 7.6 in a trixie chroot.

What is known about running smtpd in tests is in shared/DESIGN.md and the lab reports:
start by absolute path with -d; one smtpd per root filesystem (fixed control socket)
and a persistent spool to clean; tables run as user ``opensmtpd`` and must be readable
by it; the listener opens before the table handshake ends (wait for the table); a hung
table blocks SIGTERM (SIGKILL every descendant by PID).
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPOOL_DIRS = ("queue", "incoming", "temporary", "corrupt", "offline", "purge")
LIBEXEC = "usr/libexec/opensmtpd"
SMTPD_USER = "opensmtpd"


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Root:
    """A root filesystem with smtpd: "/" (host) or a debootstrap chroot."""

    path: Path
    name: str  # "6.8" / "7.6"

    @property
    def chrooted(self) -> bool:
        return self.path != Path("/")

    def host(self, inside: str) -> Path:
        """Host path of a path inside the root."""
        return self.path / inside.lstrip("/")

    def install_backend(self, name: str, source: str) -> str:
        """Install an executable as PATH_LIBEXEC/table-NAME; returns its path inside."""
        target = self.host(f"/{LIBEXEC}/table-{name}")
        target.write_text(source)
        target.chmod(0o755)
        return f"/{LIBEXEC}/table-{name}"

    def remove_backends(self, prefix: str = "pyos") -> None:
        for path in self.host(f"/{LIBEXEC}").glob(f"table-{prefix}*"):
            path.unlink()


@dataclass
class Smtpd:
    root: Root
    conf: str
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    logfile: object = None
    extra_pids: list[int] = field(default_factory=list)

    def start(self, ready_tables: Iterable[str] = (), port: int | None = None,
              timeout: float = 15.0) -> None:
        clean_spool(self.root)
        conf_inside = "/etc/pyos-e2e.conf"
        conf_host = self.root.host(conf_inside)
        conf_host.write_text(self.conf)
        conf_host.chmod(0o644)
        check = self._command("-n", "-f", conf_inside)
        result = subprocess.run(check, capture_output=True, text=True, env=self.env, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"smtpd -n rejected the config:\n{self.conf}\n{result.stderr}")
        self.logfile = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            self._command("-d", "-v", "-T", "lookup", "-f", conf_inside),
            stdout=self.logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout
        pending = set(ready_tables)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"smtpd {self.root.name} exited at start:\n{self.log()}")
            lines = self.log().splitlines()
            pending = {t for t in pending
                       if not any(f"table {t}[" in line and "ready:" in line for line in lines)}
            if not pending and (port is None or port_open(port)):
                return
            time.sleep(0.05)
        raise RuntimeError(f"smtpd {self.root.name} not ready (waiting for {pending}):\n"
                           f"{self.log()}")

    def _command(self, *args: str) -> list[str]:
        smtpd = ["/usr/sbin/smtpd", *args]
        return ["chroot", str(self.root.path), *smtpd] if self.root.chrooted else smtpd

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def smtpctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["/usr/sbin/smtpctl", *args]
        if self.root.chrooted:
            cmd = ["chroot", str(self.root.path), *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    def stop(self) -> None:
        if self.process is None:
            return
        pids = [self.process.pid, *descendants(self.process.pid)]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(6)
            except subprocess.TimeoutExpired:
                pass
        for pid in pids:  # a hung table blocks SIGTERM (lab-6.8 §1 pitfall 7)
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self.logfile is not None:
            self.logfile.close()  # type: ignore[attr-defined]
        clean_spool(self.root)
        self.process = None


def clean_spool(root: Root) -> None:
    spool = root.host("/var/spool/smtpd")
    for name in SPOOL_DIRS:
        directory = spool / name
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Outcome:
    """What an SMTP client saw: the last reply code and text of a transaction."""

    code: int
    text: str
    stage: str

    @property
    def accepted(self) -> bool:
        return self.code == 250 and self.stage == "data"


def send(port: int, sender: str, rcpt: str, body: str = "Subject: test\r\n\r\nhello\r\n",
         *, helo: str = "client.test", starttls: bool = False,
         auth: tuple[str, str] | None = None, timeout: float = 20.0) -> Outcome:
    """One SMTP transaction; returns where it stopped and with what reply."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=timeout) as client:
        client.ehlo()
        if starttls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            client.starttls(context=context)
            client.ehlo()
        if auth is not None:
            try:
                code, text = client.login(*auth)
            except smtplib.SMTPAuthenticationError as exc:
                return Outcome(exc.smtp_code, exc.smtp_error.decode(errors="replace"), "auth")
            except smtplib.SMTPResponseException as exc:
                return Outcome(exc.smtp_code, exc.smtp_error.decode(errors="replace"), "auth")
        code, text = client.mail(sender)
        if code != 250:
            return Outcome(code, text.decode(errors="replace"), "mail")
        code, text = client.rcpt(rcpt)
        if code not in (250, 251):
            return Outcome(code, text.decode(errors="replace"), "rcpt")
        code, text = client.data(body.encode())
        return Outcome(code, text.decode(errors="replace"), "data")


def wait_for(predicate: object, timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def maildir_messages(directory: Path) -> list[str]:
    new = directory / "new"
    if not new.is_dir():
        return []
    return [p.read_text(errors="replace") for p in sorted(new.iterdir())]
