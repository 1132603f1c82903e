"""smtpd's side of a table backend: start it exactly as smtpd does and drive it.

Used by ``opensmtpd-table``, the conformance battery and the benchmarks. The protocol is
the wire tier's ``SmtpdSide`` of each generation; this adds the process and the socket.
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
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

from ..wire import LineBuffer, ProtocolViolation, decode
from .wire import PROTOCOLS, imsg, native, procexec2020
from .wire.events import Answer, Error, Op, Open, Registered, Reply, Request
from .wire.services import Service


class BackendTimeout(Exception):
    """No complete reply within the driver's timeout (smtpd itself would wait forever)."""


class BackendExited(Exception):
    """The backend closed its socket (smtpd would exit: 'table-proc: getline')."""


def ending(returncode: int | None) -> str:
    """How a process ended, for humans: ``exited with status 3``, ``was killed by
    signal 9 (SIGKILL)``."""
    if returncode is None:
        return "closed its end of the socket but is still running"
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        name = ""
    return f"was killed by signal {-returncode}{name}"


SmtpdSide = imsg.SmtpdSide | native.SmtpdSide | procexec2020.SmtpdSide


class Driver:
    """Start ``command`` as table ``table`` and speak ``protocol`` to it."""

    def __init__(self, command: Sequence[str], *, protocol: str = "native", table: str = "test",
                 config: str | None = None, timeout: float = 10.0,
                 smtpd_version: str = "7.6.0-portable", stderr: int | None = None,
                 form_2020: str = "named") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        if form_2020 not in procexec2020.FORMS:
            raise ValueError(f"unknown 2020 form {form_2020!r}")
        self.protocol, self.table, self.timeout = protocol, table, timeout
        self.side: SmtpdSide
        if protocol == "native":
            self.side = native.SmtpdSide(clock=time.time)
        elif protocol == "imsg":
            self.side = imsg.SmtpdSide(os.getpid())
        else:  # 2020 requests name the table (the article's form) unless asked not to
            self.side = procexec2020.SmtpdSide(form_2020, clock=time.time)
        self.services: tuple[Service, ...] = ()
        self._seq = 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [table, *([config] if config is not None else []), *command[1:]]
        stdout = subprocess.DEVNULL if protocol == "imsg" else theirs.fileno()
        self.process = subprocess.Popen(argv, executable=command[0], stdin=theirs.fileno(),
                                        stdout=stdout, stderr=stderr, close_fds=True)
        theirs.close()
        self.sock = ours
        self.fd = ours.fileno()
        self._lines = LineBuffer()  # read_line(): raw lines, outside the judged exchange
        self._handshaken = False
        try:
            self._send(self.side.send(Open(table, smtpd_version)))
            event = self._next_event()
            assert isinstance(event, Registered)
            self.services = event.services
            self._handshaken = True
        except BaseException:
            self.close(timeout=1.0)  # a failed handshake leaves no process behind
            raise

    # --- transport ---

    def _exited(self) -> BackendExited:
        """The backend is gone: say how (its status, once it is reaped), and when."""
        try:
            returncode: int | None = self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            returncode = None
        when = "after" if self._handshaken else "before the end of"
        return BackendExited(f"the backend {ending(returncode)} {when} the handshake")

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            raise self._exited() from None

    def _fill(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
            raise BackendTimeout(f"no reply within {self.timeout:g}s")
        try:
            data = os.read(self.fd, 65536)
        except ConnectionResetError:  # it exited with our request unread
            data = b""
        if not data:
            raise self._exited()
        return data

    def _next_event(self) -> Registered | Answer:
        """The next event of smtpd's end, reading as needed (ProtocolViolation: smtpd
        would exit)."""
        deadline = time.monotonic() + self.timeout
        while (event := self.side.next_event()) is None:
            self.side.receive_data(self._fill(deadline))
        return event

    def read_line(self, timeout: float | None = None) -> str:
        """One raw line, for what was sent with ``send_raw`` (not judged)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (raw := self._lines.next_line()) is None:
            self._lines.feed(self._fill(deadline))
        return decode(raw)

    # --- requests ---

    def send_raw(self, data: bytes) -> None:
        self._send(data)

    def query(self, op: Op, service: Service | None = None, key: str | None = None, *,
              service_code: int | None = None) -> Reply:
        """One request, answered as smtpd would see it. ``service_code`` (imsg): a service
        number instead of ``service``, e.g. one no smtpd has."""
        raw_service = service.value if service is not None else ""
        if service_code is not None:
            service, raw_service = Service.from_code(service_code), f"0x{service_code:x}"
        request = Request(op, self._request_id(), self.table, service,
                          key if op is Op.CHECK or op is Op.LOOKUP else None, raw_service)
        self._send(self.side.send(request))
        event = self._next_event()
        if not isinstance(event, Answer) or event.id != request.id:  # the sides guarantee it
            raise ProtocolViolation(f"expected the answer to {request.id}, got {event!r}")
        return event.reply

    def _request_id(self) -> str:
        """smtpd 7.6's ids are 8 hex digits, the 2020 dialect's 16; imsg has none."""
        if self.protocol == "native":
            return f"{secrets.randbits(32):08x}"
        if self.protocol == "2020":
            return f"{secrets.randbits(64):016x}"
        self._seq += 1
        return str(self._seq)

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
    if isinstance(reply, Error):
        return f"error ({reply.reason})" if reply.reason else "error"
    name = type(reply).__name__
    value = getattr(reply, "value", None)
    return {"Found": "found", "NotFound": "not-found", "Updated": "updated"}[name] + (
        f" {value}" if value is not None else "")
