"""The table-procexec core, sans-IO: smtpd's imsg on one side, a line-protocol child on the other.

    smtpd <= 7.5 --imsg on fd 0--> Bridge --0.1 or 2020 lines--> child (any language)

The runtime (runtime.py, child.py) owns the processes, the file descriptors and the
clock: it feeds bytes, process events and the time in, and takes bytes and spawn/kill
decisions out. Nothing here blocks, sleeps or reads a clock of its own, so the unit
tests drive it with a fake one. Which dialect the child is spoken to is dialect.py's
business; the requests in flight are pending.py's.

Invariants (DESIGN.md): every imsg request gets exactly one reply, of type
PROC_TABLE_OK, in request order (imsg has no ids, table-protocols.md §1.6); whatever is
short of a definite answer from the child is -1 (smtpd tempfails, the sender retries);
no request waits past its deadline. A native child's ``register|`` services are
remembered and any other service is answered -1 without asking it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from ..table.metrics import TableMetrics
from ..table.wire import imsg
from ..table.wire.events import Error, Found, Hello, Malformed, Op, Ready, Reply, Request
from ..table.wire.services import Service
from ..wire import MAX_LINE, LineBuffer, ProtocolViolation, decode, encode
from .dialect import Dialect, Restart
from .logsafe import shown
from .pending import Pending, Requests
from .settings import Settings

log = logging.getLogger("opensmtpd.procexec")


class Phase(enum.Enum):
    DOWN = "down"            # no child process
    HANDSHAKE = "handshake"  # 0.1: config lines sent, waiting for register|ready
    READY = "ready"          # requests go to the child


# Plain module constants: an Enum member looked up on the class costs a descriptor call,
# and the hot path compares the phase for every request and every reply.
DOWN, HANDSHAKE, READY = Phase.DOWN, Phase.HANDSHAKE, Phase.READY


class Bridge:
    """One smtpd table served by a child process (restarted as often as needed)."""

    def __init__(self, settings: Settings | None = None, *, pid: int = 0,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.settings = settings or Settings()
        self._smtpd = imsg.TableSide(pid)
        self._wallclock = wallclock
        self.table = ""
        self.opened = False
        self.dialect = Dialect(self.settings.protocol, self.settings.form_2020)
        self._child_id = self.dialect.child_id  # (bound once: the hot path calls it)
        self._deadline = self.settings.deadline
        self.phase = DOWN
        self.child_pid: int | None = None
        self.services: frozenset[Service] = frozenset()
        self.spawn_at: float | None = None
        self.kill_reason: str | None = None
        self._kill_delay = 0.0
        self._handshake_deadline = 0.0
        self._requests = Requests()
        self._pending = self._requests.entries  # the hot path only reads it
        self._lines = LineBuffer()
        self.to_smtpd = bytearray()  # bytes the runtime owes smtpd (it clears what it sent)
        self.to_child = bytearray()  # bytes the runtime owes the current child
        self._failures = 0  # consecutive crashes, for the back-off
        self._timeouts = 0  # consecutive deadline misses of the current child
        self._children = 0  # started so far: all but the first are restarts
        self.metrics = TableMetrics.off()  # the runtime turns them on (docs/monitoring.md)
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
        wake = self._requests.next_deadline()
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
                    entry = self._requests.add(Request(event.op, event.id, self.table),
                                               now + self._deadline, self._child_id)
                    entry.reply = Error("malformed request")
            else:
                log.info("smtpd sent %s: ignored (only EOF ends the bridge)", event.what)
        if self._pending:
            self._requests.flush(self.to_smtpd, self._smtpd.send)  # (_flush, inlined)

    def _open(self, hello: Hello, now: float) -> None:
        self.to_smtpd += self._smtpd.send(Ready())
        if self.opened:
            return
        self.opened, self.table = True, hello.table
        self.spawn_at = now

    def _request(self, request: Request, now: float) -> None:
        entry = self._requests.add(request, now + self._deadline, self._child_id)
        key = request.key
        ready = self.phase is READY and self.kill_reason is None
        if ready and request.service is not None and (
                key is None or ("\n" not in key and "\r" not in key)):
            self._send(entry)  # the common case, with nothing to refuse
            return
        refusal = self._refusal(request)
        if refusal is None and not ready:
            restart_at = self.spawn_at if self.child_pid is None else None
            refusal = self._requests.cannot_wait(entry, restart_at, now)
        if refusal is not None:
            log.warning("%s: %s: answering -1 (tempfail)", request.describe(), refusal)
            entry.reply = Error(refusal)
        elif ready:
            self._send(entry)
        elif self.child_pid is None and self.spawn_at is not None:
            # it waits: sent once a child is ready (_send_queued), -1 at its deadline
            log.info("%s: waits for the next child (starting in %.2fs)", request.describe(),
                     max(self.spawn_at - now, 0.0))

    def _refusal(self, request: Request) -> str | None:
        if request.op is not Op.UPDATE and request.service is None:
            return f"unknown service {request.raw_service}"
        if request.key is not None and ("\n" in request.key or "\r" in request.key):
            return "the key holds a line break, which the line protocol cannot carry"
        if not self.opened:
            return "request before OPEN"
        return None

    def _send(self, entry: Pending) -> None:
        request = entry.request
        dialect = self.dialect
        if dialect.native and request.op is not Op.UPDATE and (
                request.service not in self.services):
            name = str(request.service)
            if name not in self._warned:  # once per service: smtpd.conf decides this
                self._warned.add(name)
                log.warning("smtpd asks for service %s, which the child did not register: "
                            "answering -1 (tempfail) without asking it", name)
            entry.reply = Error(f"service {name} not registered by the child")
            return
        self.to_child += dialect.request(request.op, self.table, entry.child_id,
                                         request.service, request.key,
                                         f"{self._wallclock():.6f}")
        entry.sent = True

    def _answer(self, entry: Pending, reply: Reply) -> None:
        value = reply.value if isinstance(reply, Found) else None
        # (at most 4 bytes a character: short values need no encoding to be measured)
        if value is not None and (len(value) > imsg.MAX_VALUE // 4 or "\0" in value):
            size = len(encode(value))
            if size > imsg.MAX_VALUE or "\0" in value:
                log.error("%s: the child's value (%d bytes) does not fit an imsg reply (at most "
                          "%d bytes, no NUL): answering -1 (tempfail)", entry.request.describe(),
                          size, imsg.MAX_VALUE)
                reply = Error("value too long for imsg")
        entry.reply = reply

    def _flush(self) -> None:
        """Write every answered request at the head of the queue: imsg replies go in order."""
        self._requests.flush(self.to_smtpd, self._smtpd.send)

    # --- the child's side ---

    def child_started(self, pid: int, now: float) -> None:
        self._children += 1
        if self._children > 1:
            self.metrics.count("child_restarts")
        self.child_pid, self.spawn_at = pid, None
        self._lines = LineBuffer()
        self.to_child.clear()
        self._timeouts = 0
        handshake = self.dialect.handshake(self.table)
        if handshake is not None:
            self.phase = HANDSHAKE
            self._handshake_deadline = now + self.settings.handshake_timeout
            self.to_child += handshake
            return
        self.phase = READY
        sure = " (it did not answer the 0.1 handshake)" if self.dialect.probing else ""
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
            delay = self._delay(self.dialect.failed(f"it {how}"))
        failed = self._down(now, delay)
        if failed:
            log.error("%d request(s) the child had not answered: -1 (tempfail)", failed)

    def _down(self, now: float, delay: float) -> int:
        """No child any more: fail what it was asked, schedule the next one. What it was
        not asked yet waits for the next one, unless that comes after its deadline.
        Returns how many requests the gone child had been asked."""
        self.child_pid, self.phase, self.services = None, DOWN, frozenset()
        self.spawn_at = now + delay
        failed, late, waiting = self._requests.child_gone(self.spawn_at)
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

    def _delay(self, restart: Restart | None) -> float:
        """Seconds until the next child: at once after a failed 0.1 probe, else the
        back-off."""
        return 0.0 if restart is Restart.AT_ONCE else self._backoff()

    def _request_kill(self, reason: str, delay: float) -> None:
        if self.child_pid is not None and self.kill_reason is None:
            self.kill_reason, self._kill_delay = reason, delay

    def _probe_failed(self, why: str, kill: str | None = None) -> bool:
        """The current child failed at something (``why``). While the dialect is probed
        that is its answer: the dialect switches and this child is stopped (as ``kill``).
        False when the dialect is known: the caller's own policy applies."""
        if self.kill_reason is not None:  # condemned already: nothing more to learn
            return True
        restart = self.dialect.failed(why)
        if restart is None:
            return False
        self._request_kill(kill or why, self._delay(restart))
        return True

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
            self._requests.flush(self.to_smtpd, self._smtpd.send)  # (_flush, inlined)

    def _registration(self, line: str) -> None:
        try:
            services = self.dialect.registration(line)
        except ProtocolViolation:
            why = f"it answered the handshake with {shown(line)}"
            if not self._probe_failed(why):
                log.error("%s, expected register|…: restarting it", why)
                self._request_kill(why, self._backoff())
            return
        if services is None:
            return
        self.services, self.phase = frozenset(services), READY
        log.info("ready: child pid %s speaks the 0.1 protocol, registered %s", self.child_pid,
                 ", ".join(s.value for s in services) or "nothing")
        if not services:
            log.warning("the child registered no service: every request is answered -1")
        self._send_queued()

    def _send_queued(self) -> None:
        for entry in self._requests.unsent():
            self._send(entry)

    def _reply_line(self, line: str, truncated: bool) -> None:
        head, _, rest = line.partition("|")
        child_id = (rest.partition("|")[0]
                    if head.endswith("-result") or head == "table-response" else None)
        entry = self._pending.get(child_id) if child_id else None
        if entry is None or not entry.sent or entry.reply is not None:
            if child_id is not None and self._requests.expired(child_id):
                log.warning("late reply to request %s discarded (answered -1 at its deadline)",
                            child_id)
                return
            self._garbage(line, "no request waits for it")
            return
        if truncated:
            log.error("%s: the child's reply is longer than %d bytes: answering -1 (tempfail)",
                      entry.request.describe(), len(line))
            self._answer(entry, Error("reply too long"))
            return
        reply = self._parse(entry, line)
        if reply is None:
            self._answer(entry, Error("malformed reply from the child"))
            self._probe_failed("it answered with garbage",
                               "garbage while probing the 2020 dialect")
            return
        self._failures = self._timeouts = 0
        if self.dialect.known is None:  # a probe of the 2020 dialect succeeded
            self.dialect.answered()
        self._answer(entry, reply)

    def _parse(self, entry: Pending, line: str) -> Reply | None:
        request = entry.request
        try:
            reply = self.dialect.parse_reply(request.op, entry.child_id, line)
        except ProtocolViolation as exc:
            log.error("%s: malformed reply from the child (%s): %s: answering -1 (tempfail)",
                      request.describe(), exc, shown(line))
            self.metrics.count("child_malformed")
            return None
        if isinstance(reply, Error):
            detail = f": {reply.reason}" if reply.reason and reply.reason != "failure" else ""
            log.warning("%s: the child answered error%s", request.describe(), detail)
        return reply

    def _garbage(self, line: str, why: str) -> None:
        """A line no request can be matched to: the oldest question gets -1 right away
        (the child is confused; waiting for its deadline would only delay the tempfail)."""
        oldest = self._requests.oldest_asked()
        answered = f"; {oldest.request.describe()}: answering -1 (tempfail)" if oldest else ""
        log.error("malformed line from the child (%s): %s%s", why, shown(line), answered)
        self.metrics.count("child_malformed")
        if oldest is not None:
            self._answer(oldest, Error("malformed line from the child"))
        self._probe_failed("it wrote garbage", "garbage while probing the 2020 dialect")

    # --- time ---

    def tick(self, now: float) -> None:
        """Apply deadlines: requests, the handshake, a child that stopped answering."""
        for entry in self._requests.expire(now):
            what = "no reply from the child" if entry.sent else "no child ready to ask"
            log.error("%s: %s within %gs: answering -1 (tempfail)",
                      entry.request.describe(), what, self.settings.deadline)
            if entry.sent:
                self._timeouts += 1
                self.metrics.count("child_deadline")
        if self.kill_reason is not None:
            pass  # the runtime stops this child before anything else
        elif self.phase is HANDSHAKE and now >= self._handshake_deadline:
            why = f"no register|ready within {self.settings.handshake_timeout:g}s"
            if not self._probe_failed(why):
                log.error("child pid %s: %s: restarting it", self.child_pid, why)
                self._request_kill(why, self._backoff())
        elif self._timeouts and self.child_pid is not None:
            if self._probe_failed("no reply before the deadline",
                                  "silent while probing the 2020 dialect"):
                pass
            elif self._timeouts >= self.settings.restart_after:
                why = f"{self._timeouts} requests in a row got no reply in time"
                log.error("child pid %s: %s: restarting it", self.child_pid, why)
                self._request_kill(why, self._backoff())
        self._flush()
