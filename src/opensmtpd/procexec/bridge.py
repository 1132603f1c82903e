"""The table-procexec core, sans-IO: smtpd's imsg on one side, a line-protocol child on the other.

    smtpd <= 7.5 --imsg on fd 0--> Bridge --0.1 or 2020 lines--> child (any language)

The runtime (main.py) owns the processes, the file descriptors and the clock: it feeds
bytes, process events and the time in, and takes bytes and spawn/kill decisions out.
Nothing here blocks, sleeps or reads a clock of its own, so the unit tests drive it
with a fake one.

Invariants (DESIGN.md): every imsg request gets exactly one reply, of type
PROC_TABLE_OK, in request order (imsg has no ids, table-protocols.md §1.6); whatever is
short of a definite answer from the child is -1 (smtpd tempfails, the sender retries);
no request waits past its deadline. The child's dialect:

- ``native``: the smtpd 7.6 protocol (§3). The handshake is sent after smtpd's OPEN, so
  the child gets ``config|tablename|<name>``; its ``register|`` services are remembered
  and any other service is answered -1 without asking it.
- ``2020``: the seed's table-procexec dialect (§2), no handshake, ``table-result|…``;
  requests in the article's named form (``table|0.1|ts|<table>|op|id|…``, what
  go-opensmtpd and py-opensmtpd parse) unless ``form_2020`` is "unnamed".
- ``auto``: see ``Settings.protocol`` and docs/table-procexec.md.
"""

from __future__ import annotations

import enum
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..table.wire import imsg, native, procexec2020
from ..table.wire.events import Answer, Found, Hello, Malformed, Op, Ready, Reply, Request
from ..table.wire.events import Error as Failed  # merge: the class is Error now
from ..table.wire.services import Service
from ..wire import MAX_LINE, LineBuffer, ProtocolViolation, decode, encode

describe = Request.describe  # merge: write request.describe() at the call sites

log = logging.getLogger("opensmtpd.procexec")

PROTOCOLS = ("auto", "native", "2020")
# Requests that wait for a child being (re)started (down, starting, in its handshake), each
# until its own deadline; one more is answered -1 at once. smtpd <= 7.5 asks a table one
# request at a time (§1.6), so more than one only comes from another client.
MAX_WAITING = 256
# What the child reads in config|smtpd-version: the protocol it is spoken to is 7.6's,
# by table-procexec on behalf of an older smtpd (same shape as "7.6.0-portable").
SMTPD_VERSION = "7.6.0-procexec"
EXPIRED_MEMORY = 256  # ids answered -1 at their deadline, remembered to spot late replies
SHOWN = 160  # characters of a child's line quoted in a log line


@dataclass(frozen=True)
class Settings:
    """How the bridge treats its child; every duration is in seconds.

    ``protocol`` "auto": each child is first offered the 0.1 handshake; one that
    registers speaks 0.1 from then on. One that answers anything else, stays silent for
    ``handshake_timeout`` or exits is restarted at once and spoken to in the 2020
    dialect, which holds once the child answers a request with ``table-result|``; a 2020
    attempt that fails (exit, garbage, deadline) goes back to the 0.1 handshake.
    """

    protocol: str = "auto"
    form_2020: str = "named"  # or "unnamed": the never-merged C branch's requests (§2)
    deadline: float = 5.0
    handshake_timeout: float = 2.0  # a loaded host can take a second to start Python
    min_backoff: float = 0.25
    max_backoff: float = 5.0
    restart_after: int = 3  # consecutive deadline misses before a hung child is restarted

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, "
                             f"not {self.protocol!r}")
        if self.form_2020 not in procexec2020.FORMS:
            raise ValueError(f"form-2020 must be one of {', '.join(procexec2020.FORMS)}, "
                             f"not {self.form_2020!r}")
        for name in ("deadline", "handshake_timeout", "min_backoff", "max_backoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be a positive number of seconds")
        if self.max_backoff < self.min_backoff:
            raise ValueError("max-backoff must not be below min-backoff")
        if self.restart_after < 1:
            raise ValueError("restart-after must be at least 1")


class Phase(enum.Enum):
    DOWN = "down"            # no child process
    HANDSHAKE = "handshake"  # 0.1: config lines sent, waiting for register|ready
    READY = "ready"          # requests go to the child


# Plain module constants: an Enum member looked up on the class costs a descriptor call,
# and the hot path compares the phase for every request and every reply.
DOWN, HANDSHAKE, READY = Phase.DOWN, Phase.HANDSHAKE, Phase.READY


@dataclass(slots=True)
class _Pending:
    request: Request
    child_id: str  # the id the child sees (imsg has none: ours, unique per bridge)
    deadline: float
    sent: bool = False
    reply: Reply | None = None


def shown(line: str) -> str:
    """A child's line as quoted in logs: bounded, with a found value hidden (it may be a
    credentials hash or a password)."""
    head, sep, _value = line.partition("|found|")
    kind = head.split("|", 1)[0]
    if sep and (kind.endswith("-result") or kind == "table-response"):
        line = f"{head}|found|<value hidden>"
    return repr(line[:SHOWN] + ("…" if len(line) > SHOWN else ""))


class Bridge:
    """One smtpd table served by a child process (restarted as often as needed)."""

    def __init__(self, settings: Settings | None = None, *, pid: int = 0,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.settings = settings or Settings()
        self._smtpd = imsg.TableSide(pid)
        self._wallclock = wallclock
        self.table = ""
        self.opened = False
        forced = self.settings.protocol
        self.dialect: str | None = None if forced == "auto" else forced  # known for sure
        self.child_dialect = self.dialect or "native"  # what the current/next child hears
        self.phase = DOWN
        self.child_pid: int | None = None
        self.services: frozenset[Service] = frozenset()
        self.spawn_at: float | None = None
        self.kill_reason: str | None = None
        self._kill_delay = 0.0
        self._registering: list[Service] = []
        self._handshake_deadline = 0.0
        self._pending: dict[str, _Pending] = {}
        self._expired: deque[str] = deque(maxlen=EXPIRED_MEMORY)
        self._lines = LineBuffer()
        self.to_smtpd = bytearray()  # bytes the runtime owes smtpd (it clears what it sent)
        self.to_child = bytearray()  # bytes the runtime owes the current child
        self._failures = 0  # consecutive crashes, for the back-off
        self._timeouts = 0  # consecutive deadline misses of the current child
        self._ids = itertools.count(secrets.randbits(30))
        self._warned: set[str] = set()

    # --- outputs, for the runtime ---

    def take_smtpd_output(self) -> bytes:
        data = bytes(self.to_smtpd)
        self.to_smtpd.clear()
        return data

    def take_child_output(self) -> bytes:
        data = bytes(self.to_child)
        self.to_child.clear()
        return data

    def spawn_due(self, now: float) -> bool:
        return self.child_pid is None and self.spawn_at is not None and self.spawn_at <= now

    def next_wakeup(self) -> float | None:
        """When ``tick`` has something to do (a deadline, a respawn), if ever."""
        wake = None
        for entry in self._pending.values():  # arrival order = deadline order
            if entry.reply is None:
                wake = entry.deadline
                break
        if self.phase is HANDSHAKE and (wake is None or self._handshake_deadline < wake):
            wake = self._handshake_deadline
        if self.child_pid is None and self.spawn_at is not None and (
                wake is None or self.spawn_at < wake):
            wake = self.spawn_at
        return wake

    # --- smtpd's side ---

    def receive_smtpd(self, data: bytes, now: float) -> None:
        smtpd = self._smtpd
        smtpd.receive_data(data)
        while (event := smtpd.next_event()) is not None:
            if isinstance(event, Request):
                self._request(event, now)
            elif isinstance(event, Hello):
                self._open(event, now)
            elif isinstance(event, Malformed):
                log.error("malformed message from smtpd: %s", event.reason)
                if event.id is not None and event.op is not None:
                    entry = self._enqueue(Request(event.op, event.id, self.table), now)
                    entry.reply = Failed("malformed request")
            else:
                log.info("smtpd sent %s: ignored (only EOF ends the bridge)", event.what)
        if self._pending:
            self._flush()

    def _open(self, hello: Hello, now: float) -> None:
        self.to_smtpd += self._smtpd.send(Ready())
        if self.opened:
            return
        self.opened, self.table = True, hello.table
        self.spawn_at = now

    def _enqueue(self, request: Request, now: float) -> _Pending:
        n = next(self._ids)
        child_id = f"{n & 0xFFFFFFFF:08x}" if self.child_dialect == "native" else f"{n:016x}"
        entry = _Pending(request, child_id, now + self.settings.deadline)
        self._pending[child_id] = entry
        return entry

    def _request(self, request: Request, now: float) -> None:
        entry = self._enqueue(request, now)
        key = request.key
        ready = self.phase is READY and self.kill_reason is None
        if ready and request.service is not None and (
                key is None or ("\n" not in key and "\r" not in key)):
            self._send(entry)  # the common case, with nothing to refuse
            return
        refusal = self._refusal(request)
        if refusal is None and not ready:
            refusal = self._cannot_wait(entry, now)
        if refusal is not None:
            log.warning("%s: %s: answering -1 (tempfail)", describe(request), refusal)
            entry.reply = Failed(refusal)
        elif ready:
            self._send(entry)
        elif self.child_pid is None and self.spawn_at is not None:
            # it waits: sent once a child is ready (_send_queued), -1 at its deadline
            log.info("%s: waits for the next child (starting in %.2fs)", describe(request),
                     max(self.spawn_at - now, 0.0))

    def _refusal(self, request: Request) -> str | None:
        if request.op is not Op.UPDATE and request.service is None:
            return f"unknown service {request.raw_service}"
        if request.key is not None and ("\n" in request.key or "\r" in request.key):
            return "the key holds a line break, which the line protocol cannot carry"
        if not self.opened:
            return "request before OPEN"
        return None

    def _cannot_wait(self, entry: _Pending, now: float) -> str | None:
        """Why a request cannot wait for the child being (re)started, if it cannot."""
        waiting = sum(1 for e in self._pending.values() if e.reply is None and not e.sent)
        if waiting > MAX_WAITING:  # itself included
            return f"{MAX_WAITING} requests already wait for the child"
        if self.child_pid is None and self.spawn_at is not None and (
                self.spawn_at >= entry.deadline):
            return (f"the child is down and restarts in {self.spawn_at - now:.2f}s, after "
                    f"this request's deadline")
        return None

    def _send(self, entry: _Pending) -> None:
        request = entry.request
        stamp = f"{self._wallclock():.6f}"
        if self.child_dialect == "native":
            if request.op is not Op.UPDATE and request.service not in self.services:
                name = str(request.service)
                if name not in self._warned:  # once per service: smtpd.conf decides this
                    self._warned.add(name)
                    log.warning("smtpd asks for service %s, which the child did not register: "
                                "answering -1 (tempfail) without asking it", name)
                entry.reply = Failed(f"service {name} not registered by the child")
                return
            line = native.request(request.op, self.table, entry.child_id, request.service,
                                  request.key, stamp)
        else:
            named = self.table if self.settings.form_2020 == "named" else None
            line = procexec2020.request(request.op, entry.child_id, request.service,
                                        request.key, stamp, table=named)
        self.to_child += line
        entry.sent = True

    def _answer(self, entry: _Pending, reply: Reply) -> None:
        value = reply.value if isinstance(reply, Found) else None
        # (at most 4 bytes a character: short values need no encoding to be measured)
        if value is not None and (len(value) > imsg.MAX_VALUE // 4 or "\0" in value):
            size = len(encode(value))
            if size > imsg.MAX_VALUE or "\0" in value:
                log.error("%s: the child's value (%d bytes) does not fit an imsg reply (at most "
                          "%d bytes, no NUL): answering -1 (tempfail)", describe(entry.request),
                          size, imsg.MAX_VALUE)
                reply = Failed("value too long for imsg")
        entry.reply = reply

    def _flush(self) -> None:
        """Write every answered request at the head of the queue: imsg replies go in order."""
        pending = self._pending
        while pending:
            key = next(iter(pending))
            entry = pending[key]
            if entry.reply is None:
                return
            del pending[key]
            request = entry.request
            self.to_smtpd += self._smtpd.send(Answer(request.op, request.id, entry.reply))

    # --- the child's side ---

    def child_started(self, pid: int, now: float) -> None:
        self.child_pid, self.spawn_at = pid, None
        self._lines = LineBuffer()
        self.to_child.clear()
        self._timeouts = 0
        if self.child_dialect == "native":
            self.phase = HANDSHAKE
            self._registering = []
            self._handshake_deadline = now + self.settings.handshake_timeout
            self.to_child += native.handshake(self.table, SMTPD_VERSION)
            return
        self.phase = READY
        sure = "" if self.dialect else " (it did not answer the 0.1 handshake)"
        log.info("ready: child pid %d spoken to in the 2020 dialect%s", pid, sure)
        self._send_queued()

    def spawn_failed(self, reason: str, now: float) -> None:
        log.error("cannot start the child: %s", reason)
        self._down(now, self._backoff())

    def child_exited(self, how: str, now: float) -> None:
        """The child is gone (``how``: its exit status, or why it was killed)."""
        if self.child_pid is None:
            return
        if self.kill_reason is not None:
            log.info("child pid %d stopped (%s)", self.child_pid, self.kill_reason)
            self.kill_reason = None
            delay = self._kill_delay
        else:
            during = " during the handshake" if self.phase is HANDSHAKE else ""
            log.error("child pid %d %s%s", self.child_pid, how, during)
            probe = self._probe_failed(f"it {how}") if self.dialect is None else None
            delay = self._backoff() if probe is None else probe
        failed = self._down(now, delay)
        if failed:
            log.error("%d request(s) the child had not answered: -1 (tempfail)", failed)

    def _down(self, now: float, delay: float) -> int:
        """No child any more: fail what it was asked, schedule the next one. What it was
        not asked yet waits for the next one, unless that comes after its deadline.
        Returns how many requests the gone child had been asked."""
        self.child_pid, self.phase, self.services = None, DOWN, frozenset()
        self.spawn_at = spawn_at = now + delay
        failed = late = waiting = 0
        for entry in self._pending.values():
            if entry.reply is not None:
                continue
            if entry.sent:  # never resent: it may be what killed the child
                entry.reply = Failed("the child exited")
                failed += 1
            elif entry.deadline <= spawn_at:
                entry.reply = Failed("the next child starts after this request's deadline")
                late += 1
            else:
                waiting += 1
            entry.sent = False
        if late:
            log.error("%d request(s) cannot wait %.2fs for the next child: -1 (tempfail)",
                      late, delay)
        if waiting:
            log.info("%d request(s) wait for the next child (in %.2fs, each until its deadline)",
                     waiting, delay)
        self._flush()
        return failed

    def _backoff(self) -> float:
        self._failures += 1
        delay: float = self.settings.min_backoff * 2.0 ** min(self._failures - 1, 30)
        return min(self.settings.max_backoff, delay)

    def _request_kill(self, reason: str, delay: float) -> None:
        if self.child_pid is not None and self.kill_reason is None:
            self.kill_reason, self._kill_delay = reason, delay

    def _probe_failed(self, why: str) -> float | None:
        """Auto mode, dialect not known yet: the other dialect next. Returns the delay
        before the next child (None: the usual back-off)."""
        if self.child_dialect == "native":
            self.child_dialect = "2020"
            log.warning("the child did not register (%s): trying the 2020 dialect", why)
            return 0.0
        self.child_dialect = "native"
        log.warning("the 2020 dialect did not work either (%s): back to the 0.1 handshake", why)
        return None

    def receive_child(self, data: bytes, now: float) -> None:
        if self.child_pid is None:
            return
        lines = self._lines
        if (data and self.phase is READY and not lines.pending
                and data.find(b"\n") == len(data) - 1
                and len(data) <= MAX_LINE):
            self._reply_line(decode(data[:-1]), False)  # the common case: one whole reply
        else:
            lines.feed(data)
            while self.kill_reason is None and (raw := lines.next_line()) is not None:
                line = decode(raw)
                if self.phase is HANDSHAKE:
                    self._registration(line)
                else:
                    self._reply_line(line, lines.truncated)
        if self._pending:
            self._flush()

    def _registration(self, line: str) -> None:
        try:
            service = native.parse_registration(line)
        except ProtocolViolation as exc:
            if line.startswith("register|"):  # smtpd 7.6 would exit; we only skip it
                log.warning("child registered %s: ignored", exc)
                return
            why = f"it answered the handshake with {shown(line)}"
            if self.dialect is None:
                self._probe_failed(why)
                self._request_kill(why, 0.0)
            else:
                log.error("%s, expected register|…: restarting it", why)
                self._request_kill(why, self._backoff())
            return
        if service is not None:
            self._registering.append(service)
            return
        self.services = frozenset(self._registering)
        self.phase = READY
        self.dialect = "native"
        names = ", ".join(s.value for s in dict.fromkeys(self._registering)) or "nothing"
        log.info("ready: child pid %s speaks the 0.1 protocol, registered %s",
                 self.child_pid, names)
        if not self.services:
            log.warning("the child registered no service: every request is answered -1")
        self._send_queued()

    def _send_queued(self) -> None:
        for entry in self._pending.values():
            if entry.reply is None and not entry.sent:
                self._send(entry)

    def _reply_line(self, line: str, truncated: bool) -> None:
        head, _, rest = line.partition("|")
        child_id = (rest.partition("|")[0]
                    if head.endswith("-result") or head == "table-response" else None)
        entry = self._pending.get(child_id) if child_id else None
        if entry is None or not entry.sent or entry.reply is not None:
            if child_id is not None and child_id in self._expired:
                log.warning("late reply to request %s discarded (answered -1 at its deadline)",
                            child_id)
                return
            self._garbage(line, "no request waits for it")
            return
        if truncated:
            log.error("%s: the child's reply is longer than %d bytes: answering -1 (tempfail)",
                      describe(entry.request), len(line))
            self._answer(entry, Failed("reply too long"))
            return
        reply = self._parse(entry, line)
        if reply is None:
            self._answer(entry, Failed("malformed reply from the child"))
            if self.dialect is None:
                self._probe_failed("it answered with garbage")
                self._request_kill("garbage while probing the 2020 dialect", self._backoff())
            return
        self._failures = self._timeouts = 0
        if self.dialect is None:
            self.dialect = "2020"
            log.info("the child answers in the 2020 dialect: keeping it")
        self._answer(entry, reply)

    def _parse(self, entry: _Pending, line: str) -> Reply | None:
        request = entry.request
        if self.child_dialect == "native":
            try:
                reply = native.parse_reply(request.op, entry.child_id, line)
            except ProtocolViolation as exc:
                log.error("%s: malformed reply from the child (%s): %s: answering -1 (tempfail)",
                          describe(request), exc, shown(line))
                return None
        else:
            reply = procexec2020.parse_reply(request.op, entry.child_id, line)
            if isinstance(reply, Failed) and reply.reason != "failure":
                log.error("%s: malformed reply from the child: %s: answering -1 (tempfail)",
                          describe(request), shown(line))
                return None
        if isinstance(reply, Failed):
            detail = f": {reply.reason}" if reply.reason and reply.reason != "failure" else ""
            log.warning("%s: the child answered error%s", describe(request), detail)
        return reply

    def _garbage(self, line: str, why: str) -> None:
        """A line no request can be matched to: the oldest question gets -1 right away
        (the child is confused; waiting for its deadline would only delay the tempfail)."""
        oldest = next((e for e in self._pending.values() if e.sent and e.reply is None), None)
        answered = f"; {describe(oldest.request)}: answering -1 (tempfail)" if oldest else ""
        log.error("malformed line from the child (%s): %s%s", why, shown(line), answered)
        if oldest is not None:
            self._answer(oldest, Failed("malformed line from the child"))
        if self.dialect is None and self.kill_reason is None:
            self._probe_failed("it wrote garbage")
            self._request_kill("garbage while probing the 2020 dialect", self._backoff())

    # --- time ---

    def tick(self, now: float) -> None:
        """Apply deadlines: requests, the handshake, a child that stopped answering."""
        for entry in self._pending.values():
            if entry.deadline > now:
                break  # queued in arrival order, all with the same deadline length
            if entry.reply is not None:
                continue
            what = "no reply from the child" if entry.sent else "no child ready to ask"
            log.error("%s: %s within %gs: answering -1 (tempfail)",
                      describe(entry.request), what, self.settings.deadline)
            entry.reply = Failed("deadline exceeded")
            if entry.sent:
                self._expired.append(entry.child_id)
                self._timeouts += 1
        if self.kill_reason is not None:
            pass  # the runtime stops this child before anything else
        elif self.phase is HANDSHAKE and now >= self._handshake_deadline:
            why = f"no register|ready within {self.settings.handshake_timeout:g}s"
            if self.dialect is None:
                self._probe_failed(why)
                self._request_kill(why, 0.0)
            else:
                log.error("child pid %s: %s: restarting it", self.child_pid, why)
                self._request_kill(why, self._backoff())
        elif self._timeouts and self.child_pid is not None:
            if self.dialect is None and self.child_dialect == "2020":
                self._probe_failed("no reply before the deadline")
                self._request_kill("silent while probing the 2020 dialect", self._backoff())
            elif self._timeouts >= self.settings.restart_after:
                why = f"{self._timeouts} requests in a row got no reply in time"
                log.error("child pid %s: %s: restarting it", self.child_pid, why)
                self._request_kill(why, self._backoff())
        self._flush()
