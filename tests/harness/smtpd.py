"""Run a real OpenSMTPD for tests and demos: Debian 12's 6.8 on the host, 7.6 (trixie) and
7.9 (sid) in debootstrap chroots.

What is known about running smtpd in tests is in shared/DESIGN.md and the lab reports:
start by absolute path with -d; one smtpd per root filesystem (fixed control socket)
and a persistent spool to clean; tables run as user ``opensmtpd`` and must be readable
by it; the listener opens before the table handshake ends (wait for the table); a hung
table blocks SIGTERM (SIGKILL every descendant by PID).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import opensmtpd
from harness.syslog import Syslog

PACKAGE = Path(opensmtpd.__file__).resolve().parent
LIB_INSIDE = "/opt/pyos/lib"  # where install_library() puts the package inside a root
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


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def lock_name(path: Path) -> str:
    """A name for per-root lock files: the same for every path to one directory (a
    worktree's build/ may be a symlink to the shared one)."""
    return str(path.resolve()).strip("/").replace("/", "_") or "host"


def _flock(handle: IO[str], how: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{handle.name} still locked after {timeout:g}s") from None
            time.sleep(0.2)


def _mounted(where: Path) -> bool:
    return any(line.split()[1] == str(where)
               for line in Path("/proc/mounts").read_text().splitlines())


CHROOT_MOUNTS = (("proc", "proc", ("-t", "proc")), ("/dev", "dev", ("--bind",)))


def chrooted_pids(path: Path, *, below: bool = False) -> list[int]:
    """Processes whose root directory is ``path`` (an smtpd someone runs in it); with
    ``below``, also those rooted under it (smtpd's own processes chroot to its spool and
    /var/lib/opensmtpd/empty), ``path`` resolved first (/proc shows real paths)."""
    root = str(path.resolve()) if below else str(path)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                where = os.readlink(f"/proc/{entry}/root")
            except OSError:
                continue
            if where == root or (below and where.startswith(f"{root}/")):
                found.append(int(entry))
    return found


@contextlib.contextmanager
def chroot_mounts(path: Path, timeout: float = 900.0,
                  mounts: tuple[tuple[str, str, tuple[str, ...]], ...] = CHROOT_MOUNTS,
                  ) -> Iterator[None]:
    """``proc`` and ``/dev`` mounted in chroot ``path`` for as long as anyone uses it.

    Several test sessions may use one chroot at once: each holds a shared lock on
    /tmp/pyos-chroot-NAME.lock while it does. Mounting and unmounting take a second,
    exclusive lock; the last user out (the only one that can turn its shared lock into an
    exclusive one) unmounts, so /dev is never left bound into a directory that an
    ``rm -rf build`` would empty.
    """
    path = path.resolve()
    name = lock_name(path)
    with open(f"/tmp/pyos-chroot-{name}.lock", "a") as users, \
            open(f"/tmp/pyos-chroot-{name}.mount.lock", "a") as mutex:
        _flock(users, fcntl.LOCK_SH, timeout)
        try:
            _flock(mutex, fcntl.LOCK_EX, timeout)
            try:
                for source, target, args in mounts:
                    if not _mounted(path / target):
                        subprocess.run(["mount", *args, source, str(path / target)],
                                       check=True, timeout=30)
            finally:
                fcntl.flock(mutex, fcntl.LOCK_UN)
            yield
        finally:
            _flock(mutex, fcntl.LOCK_EX, timeout)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                last = True
            except BlockingIOError:
                last = False  # another session still uses the chroot
            # nor a process started without the lock; our own smtpd's last children may
            # still be exiting: give them a moment
            if last and wait_for(lambda: not chrooted_pids(path), timeout=10):
                for _, target, _ in reversed(mounts):
                    if _mounted(path / target):
                        subprocess.run(["umount", "-l", str(path / target)], check=False,
                                       timeout=30)


@dataclass
class Root:
    """A root filesystem with smtpd: "/" (host) or a debootstrap chroot."""

    path: Path
    name: str  # "6.8" / "7.6" / "7.9"
    lib: str = LIB_INSIDE  # where install_library() puts the package, inside the root

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

    def install_library(self) -> None:
        """Copy this package where user opensmtpd can import it (``self.lib``).

        Tables run as ``opensmtpd``: a virtualenv under /root is not readable by it.
        """
        lib = self.host(self.lib)
        shutil.rmtree(lib, ignore_errors=True)
        shutil.copytree(PACKAGE, lib / "opensmtpd", ignore=shutil.ignore_patterns("__pycache__"))
        for path in (lib, *lib.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        for directory in lib.parents:
            if directory in (self.path, Path("/")):
                break
            directory.chmod(directory.stat().st_mode | 0o755)

    def run(self, *command: str) -> str:
        """Run a command inside the root; its stdout."""
        argv = ["chroot", str(self.path), *command] if self.chrooted else list(command)
        return subprocess.run(argv, capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def crypt(self, password: str) -> str:
        """A crypt(3) hash for a credentials table (``smtpctl encrypt``)."""
        return self.run("/usr/sbin/smtpctl", "encrypt", password).strip()

    def pki(self) -> tuple[str, str]:
        """A self-signed certificate and key for mx.test (paths inside the root).

        STARTTLS and so AUTH work on 7.6; Debian 12's 6.8 cannot do inbound TLS.
        """
        crt, key = "/etc/ssl/pyos-e2e.crt", "/etc/ssl/pyos-e2e.key"
        if not self.host(crt).exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-days", "2", "-subj", "/CN=mx.test", "-keyout", str(self.host(key)),
                            "-out", str(self.host(crt))], check=True, capture_output=True)
            self.host(key).chmod(0o600)
        return crt, key

    def smtpd_env(self) -> dict[str, str]:
        """smtpd passes its environment to tables: this lets them import the library."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": self.lib,
                "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}


@dataclass
class Smtpd:
    root: Root
    conf: str
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    backends: dict[str, str] = field(default_factory=dict)  # table-NAME -> program text
    logfile: IO[bytes] | None = None
    lockfile: IO[str] | None = None
    extra_pids: list[int] = field(default_factory=list)
    # smtpd's options besides -d and -f: verbose, every lookup traced (the tests read the
    # trace); a bench passes () to run smtpd as installed, logging what it logs by default
    flags: tuple[str, ...] = ("-v", "-T", "lookup")
    # Daemonized as a service runs it (no -d) when set: smtpd, its tables and filters log
    # to this syslog (through a private /dev/log, harness/syslog.py) and log() reads it.
    syslog: Syslog | None = None
    namespace: str = ""  # the daemon's mount namespace: its processes are ours

    def start(self, ready_tables: Iterable[str] = (), port: int | None = None,
              timeout: float = 15.0) -> None:
        self._lock()
        for name, source in self.backends.items():  # under the lock: others may run tests
            self.root.install_backend(name, source)
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
        if self.syslog is not None:
            self._daemonize(conf_inside)
        else:
            self.process = subprocess.Popen(
                self._command("-d", *self.flags, "-f", conf_inside), stdout=self.logfile,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout
        pending = set(ready_tables)
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"smtpd {self.root.name} exited at start:\n{self.log()}")
            lines = self.log().splitlines()
            pending = {t for t in pending  # "table NAME[PID]" on stderr, "table-NAME[" syslog
                       if not any(("ready:" in line and (f"table {t}[" in line
                                                         or f"table-{t}[" in line))
                                  for line in lines)}
            if not pending and (port is None or port_open(port)):
                return
            time.sleep(0.05)
        raise RuntimeError(f"smtpd {self.root.name} not ready (waiting for {pending}):\n"
                           f"{self.log()}")

    def _daemonize(self, conf_inside: str) -> None:
        """``smtpd -f CONF`` in a private mount namespace whose /dev/log is our syslog's;
        smtpd forks into the background, its processes are found by that namespace."""
        assert self.syslog is not None and self.logfile is not None
        scratch = self.log_path.with_suffix(".dev")
        script = "\n".join((self.syslog.private_dev_script(self.root.host("/dev"), scratch),
                            "readlink /proc/self/ns/mnt >&2",
                            'exec "$@"'))
        launcher = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             *self._command(*self.flags, "-f", conf_inside)],
            stdout=self.logfile, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=self.env, timeout=30, text=True)
        lines = launcher.stderr.splitlines()
        if launcher.returncode != 0 or not lines or not lines[0].startswith("mnt:"):
            raise RuntimeError(f"smtpd {self.root.name} did not start: {launcher.stderr}")
        self.namespace = lines[0]
        if not wait_for(self.daemon_pids, timeout=10):
            raise RuntimeError(f"smtpd {self.root.name} exited at start:\n{self.log()}")

    def daemon_pids(self) -> list[int]:
        """The daemonized smtpd's processes (its mount namespace's), its parent first."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/mnt") == self.namespace:
                        found.append(int(entry))
        parents = {pid: _ppid(pid) for pid in found}
        return sorted(found, key=lambda pid: parents[pid] in parents)

    def _lock(self, timeout: float = 900.0) -> None:
        """One smtpd per root filesystem (fixed control socket, shared spool): wait for it."""
        self.lockfile = open(f"/tmp/pyos-smtpd-{lock_name(self.root.path)}.lock",  # noqa: SIM115
                             "w")
        _flock(self.lockfile, fcntl.LOCK_EX, timeout)

    def _command(self, *args: str) -> list[str]:
        smtpd = ["/usr/sbin/smtpd", *args]
        return ["chroot", str(self.root.path), *smtpd] if self.root.chrooted else smtpd

    @property
    def pid(self) -> int:
        if self.syslog is not None:
            return self.daemon_pids()[0]
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        if self.syslog is not None:
            return bool(self.namespace) and any(alive(pid) for pid in self.daemon_pids())
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        if self.syslog is not None:
            return self.syslog.text()
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
        if self.namespace:
            self._stop_daemon()
            self.namespace = ""
            clean_spool(self.root)
        if self.process is not None:
            self._terminate(self.process)
            self.process = None
            clean_spool(self.root)
        if self.logfile is not None:
            self.logfile.close()
            self.logfile = None
        if self.lockfile is not None:
            for name in self.backends:
                self.root.host(f"/{LIBEXEC}/table-{name}").unlink(missing_ok=True)
            self.lockfile.close()  # releases the flock
            self.lockfile = None

    def _stop_daemon(self) -> None:
        pids = self.daemon_pids()
        if pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[0], signal.SIGTERM)
            wait_for(lambda: not any(alive(pid) for pid in pids), timeout=6)
        for pid in pids:  # a hung table blocks SIGTERM (lab-6.8 §1 pitfall 7)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.daemon_pids(), timeout=5)

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes]) -> None:
        pids = [process.pid, *descendants(process.pid)]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(6)
        for pid in pids:  # a hung table blocks SIGTERM (lab-6.8 §1 pitfall 7)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


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
                client.login(*auth)
            except smtplib.SMTPResponseException as exc:
                return Outcome(exc.smtp_code, _text(exc.smtp_error), "auth")
        code, text = client.mail(sender)
        if code != 250:
            return Outcome(code, text.decode(errors="replace"), "mail")
        code, text = client.rcpt(rcpt)
        if code not in (250, 251):
            return Outcome(code, text.decode(errors="replace"), "rcpt")
        code, text = client.data(body.encode())
        return Outcome(code, text.decode(errors="replace"), "data")


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def wait_for(predicate: Callable[[], object], timeout: float = 20.0,
             interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def maildir_messages(directory: Path) -> list[str]:
    new = directory / "new"
    if not new.is_dir():
        return []
    return [p.read_text(errors="replace") for p in sorted(new.iterdir())]
