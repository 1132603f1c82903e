"""What the benches that drive a real smtpd share: a lean SMTP client that keeps N
sessions going at once, a counting sink, the private network namespace, process CPU.

The client is deliberately cheap (one thread, plain sockets, a selector): on a 2-CPU
machine every microsecond it spends is taken from smtpd,
so it measures its own CPU time (``Blast.cpu``) for the benches to print beside smtpd's.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
BODY_LINES = 12  # a small message: 12 lines of 78 characters


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (proc(5) fields 14 and 15; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def in_private_network(argv: Sequence[str], *, private_mounts: bool = False) -> int:
    """Run ``argv`` in a new network namespace with only loopback, up; its exit status.

    smtpd resolves every client's address: in a namespace without a resolver it gets its
    answer from /etc/hosts at once, where a resolver that drops queries (as in some
    sandboxes) stalls sessions 5 s at random. ``private_mounts`` adds a mount namespace
    of its own (unshare(1) makes it private: nothing mounted there is seen outside, and
    it all goes away with the last process in it).
    """
    unshare = ["unshare", "-n", *(["-m"] if private_mounts else [])]
    return subprocess.run([*unshare, "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                           *argv], check=False).returncode


class Sink:
    """A minimal SMTP sink on loopback (aiosmtpd), counting messages."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.count = 0
        self.port = self._free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.count += 1
        return "250 OK"


def default_recipients(n: int) -> list[str]:
    return [f"r{n}@bench.test"]


@dataclass
class Blast:
    """What ``blast`` saw: messages accepted, in how long, at what client CPU cost."""

    messages: int
    accepted: int
    wall: float  # seconds from the first connect to the last reply
    cpu: float  # CPU seconds of the client (this thread)
    failures: list[str] = field(default_factory=list)  # "message N: what, reply"

    @property
    def rate(self) -> float:
        """Messages accepted per second."""
        return self.accepted / self.wall if self.wall > 0 else 0.0


@dataclass
class _Session:
    number: int
    sock: socket.socket
    steps: list[tuple[bytes, list[bytes]]]  # (what to send, the reply codes expected)
    step: int = 0
    expect: list[bytes] = field(default_factory=list)
    buffer: bytes = b""
    lines: list[bytes] = field(default_factory=list)  # of the reply being read

    def replies(self) -> list[bytes]:
        """Complete replies in the buffer (multi-line ones joined), in order."""
        done = []
        while (end := self.buffer.find(b"\r\n")) >= 0:
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            self.lines.append(line)
            if line[3:4] != b"-":  # "250-…" continues, "250 …" ends a reply
                done.append(b"\n".join(self.lines))
                self.lines = []
        return done


def _steps(n: int, sender: str, recipients: list[str], body: bytes,
           ) -> list[tuple[bytes, list[bytes]]]:
    # One command at a time: smtpd does not advertise PIPELINING (6.8 to 7.9).
    return [(b"", [b"220"]), (f"EHLO c{n}.test\r\n".encode(), [b"250"]),
            (f"MAIL FROM:<{sender}>\r\n".encode(), [b"250"]),
            *[(f"RCPT TO:<{r}>\r\n".encode(), [b"250"]) for r in recipients],
            (b"DATA\r\n", [b"354"]), (body + b".\r\n", [b"250"]), (b"QUIT\r\n", [b"221"])]


def blast(port: int, messages: int, clients: int,
          recipients: Callable[[int], list[str]] = default_recipients,
          stall: float = 30.0) -> Blast:
    """Send ``messages`` messages to 127.0.0.1:``port``, one SMTP session each, keeping
    ``clients`` sessions open at once; every reply is checked (220, 250 EHLO, 250 MAIL,
    250 per RCPT, 354, 250 accepted, 221). A session that gets
    anything else is closed and listed in ``failures``; so is every session still open
    when nothing has arrived for ``stall`` seconds (then the rest are not sent)."""
    todo = iter(range(messages))
    selector = selectors.DefaultSelector()
    result = Blast(messages, 0, 0.0, 0.0)
    stalled = False

    def body(n: int) -> bytes:
        return f"Subject: bench {n}\r\n\r\n".encode() + (b"x" * 78 + b"\r\n") * BODY_LINES

    def begin() -> None:
        """Start the next message's session (none once stalled or all are sent). The
        connect does not block: a dropped SYN would stall every session for a second."""
        n = None if stalled else next(todo, None)
        if n is None:
            return
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        steps = _steps(n, f"s{n}@client.test", recipients(n), body(n))
        session = _Session(n, sock, steps, expect=list(steps[0][1]))
        selector.register(sock, selectors.EVENT_WRITE, session)

    def connected(session: _Session) -> None:
        error = session.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            end(session, f"connect: {os.strerror(error)}")
            return
        session.sock.setblocking(True)  # sendall; recv only when readable
        session.sock.settimeout(stall)
        selector.modify(session.sock, selectors.EVENT_READ, session)

    def end(session: _Session, failure: str | None) -> None:
        selector.unregister(session.sock)
        session.sock.close()
        if failure is None:
            result.accepted += 1
        else:
            result.failures.append(f"message {session.number}: {failure}")
        begin()

    def advance(session: _Session, reply: bytes) -> str | None:
        """Check one reply; send the next step when a step is complete. A failure, or
        None."""
        expected = session.expect.pop(0)
        if reply[:3] != expected:
            sent = session.steps[session.step][0].decode(errors="replace").strip()
            return f"after {sent or 'connect'!r}: expected {expected.decode()}, got " \
                   f"{reply.decode(errors='replace')[:200]!r}"
        if not session.expect:
            session.step += 1
            if session.step < len(session.steps):
                data, session.expect = session.steps[session.step]
                session.expect = list(session.expect)
                session.sock.sendall(data)
        return None

    started_cpu = _thread_cpu()
    started = time.perf_counter()
    for _ in range(clients):
        begin()
    while selector.get_map():
        events = selector.select(timeout=stall)
        if not events:
            stalled = True
            for key in list(selector.get_map().values()):
                end(key.data, f"no reply for {stall:g}s")
            break
        for key, mask in events:
            session: _Session = key.data
            if mask & selectors.EVENT_WRITE:
                connected(session)
                continue
            try:
                data = session.sock.recv(65536)
            except OSError as exc:
                end(session, f"recv: {exc}")
                continue
            if not data:
                end(session, f"connection closed at step {session.step}")
                continue
            session.buffer += data
            failure = None
            for reply in session.replies():
                try:
                    failure = advance(session, reply)
                except OSError as exc:
                    failure = f"send: {exc}"
                if failure is not None or session.step == len(session.steps):
                    end(session, failure)
                    break
    result.wall = time.perf_counter() - started
    result.cpu = _thread_cpu() - started_cpu
    selector.close()
    unsent = sum(1 for _ in todo)
    if unsent:
        result.failures.append(f"{unsent} messages not sent (stalled)")
    return result


def _thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime
