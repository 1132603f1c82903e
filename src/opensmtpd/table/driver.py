"""smtpd's side of a table backend: start it exactly as smtpd does and drive it.

Used by ``opensmtpd-table``, the conformance battery, the benchmarks and the bridge.
Process setup (table-protocols.md §1.1, §3.1): argv[0] is the table name, argv[1] the
config; smtpd <= 7.5 gives one socket on fd 0 only; 7.6+ gives the same socket on fd 0
and fd 1; the 2020 procexec gave a socket on fd 0 and 1 as well. stderr is inherited.
2020 requests are sent in the article's named form unless ``form_2020="unnamed"``.
Replies are judged the way smtpd judges them: what would make smtpd exit raises
ProtocolViolation.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import subprocess
import time
from collections.abc import Sequence

from ..wire import LineBuffer, ProtocolViolation, decode
from . import imsg, native, procexec2020
from .events import Failed, Op, Reply
from .services import Service


class BackendTimeout(Exception):
    """No complete reply within the driver's timeout (smtpd itself would wait forever)."""


class BackendExited(Exception):
    """The backend closed its socket (smtpd would exit: 'table-proc: getline')."""


class Driver:
    """Start ``command`` as table ``table`` and speak ``protocol`` to it."""

    def __init__(self, command: Sequence[str], *, protocol: str = "native", table: str = "test",
                 config: str | None = None, timeout: float = 10.0,
                 smtpd_version: str = "7.6.0-portable", stderr: int | None = None,
                 form_2020: str = "named") -> None:
        if protocol not in ("native", "imsg", "2020"):
            raise ValueError(f"unknown protocol {protocol!r}")
        if form_2020 not in procexec2020.FORMS:
            raise ValueError(f"unknown 2020 form {form_2020!r}")
        self.protocol, self.table, self.timeout = protocol, table, timeout
        # 2020 requests name the table (the article's form) unless asked not to
        self._named_2020: str | None = table if form_2020 == "named" else None
        self.services: tuple[Service, ...] = ()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [table, *([config] if config is not None else []), *command[1:]]
        stdout = subprocess.DEVNULL if protocol == "imsg" else theirs.fileno()
        self.process = subprocess.Popen(argv, executable=command[0], stdin=theirs.fileno(),
                                        stdout=stdout, stderr=stderr, close_fds=True)
        theirs.close()
        self.sock = ours
        self.fd = ours.fileno()
        self._lines = LineBuffer()
        self._framer = imsg.Framer()
        self._pid = os.getpid()
        try:
            if protocol == "native":
                self._send(native.handshake(table, smtpd_version))
                self.services = self._registration()
            elif protocol == "imsg":
                self._send(imsg.open_request(table, self._pid))
                msg_type, payload = self._message()
                imsg.parse_reply(None, msg_type, payload)
        except BaseException:
            self.close(timeout=1.0)  # a failed handshake leaves no process behind
            raise

    # --- transport ---

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise BackendExited(f"write failed: {exc}") from exc

    def _fill(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
            raise BackendTimeout(f"no reply within {self.timeout:g}s")
        data = os.read(self.fd, 65536)
        if not data:
            raise BackendExited("the backend closed its end (it exited?)")
        return data

    def read_line(self, timeout: float | None = None) -> str:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (raw := self._lines.next_line()) is None:
            self._lines.feed(self._fill(deadline))
        return decode(raw)

    def _message(self) -> tuple[int, bytes]:
        deadline = time.monotonic() + self.timeout
        while (msg := self._framer.next_message()) is None:
            self._framer.feed(self._fill(deadline))
        return msg

    def _registration(self) -> tuple[Service, ...]:
        services: list[Service] = []
        while (service := native.parse_registration(self.read_line())) is not None:
            services.append(service)
        if not services:
            raise ProtocolViolation("no services registered")
        return tuple(services)

    # --- requests ---

    def send_raw(self, data: bytes) -> None:
        self._send(data)

    def query(self, op: Op, service: Service | None = None, key: str | None = None, *,
              service_code: int | None = None) -> Reply:
        """One request, answered as smtpd would see it."""
        if self.protocol == "imsg":
            self._send(imsg.request(op, service, key, self._pid, service_code))
            msg_type, payload = self._message()
            reply = imsg.parse_reply(op, msg_type, payload)
            assert reply is not None
            return reply
        request_id = f"{secrets.randbits(32):08x}"
        if self.protocol == "native":
            self._send(native.request(op, self.table, request_id, service, key,
                                      f"{time.time():.6f}"))
            return native.parse_reply(op, request_id, self.read_line())
        request_id = f"{secrets.randbits(64):016x}"
        self._send(procexec2020.request(op, request_id, service, key, f"{time.time():.6f}",
                                        table=self._named_2020))
        return procexec2020.parse_reply(op, request_id, self.read_line())

    def check(self, service: Service, key: str) -> Reply:
        return self.query(Op.CHECK, service, key)

    def lookup(self, service: Service, key: str) -> Reply:
        return self.query(Op.LOOKUP, service, key)

    def fetch(self, service: Service) -> Reply:
        return self.query(Op.FETCH, service)

    def update(self) -> Reply:
        return self.query(Op.UPDATE)

    def close(self, timeout: float = 5.0) -> int | None:
        """Close the socket (EOF, as when smtpd exits) and reap the backend."""
        self.sock.close()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe_reply(reply: Reply) -> str:
    """What smtpd makes of a reply, for humans."""
    if isinstance(reply, Failed):
        return f"error ({reply.reason})" if reply.reason else "error"
    name = type(reply).__name__
    value = getattr(reply, "value", None)
    return {"Found": "found", "NotFound": "not-found", "Updated": "updated"}[name] + (
        f" {value}" if value is not None else "")
