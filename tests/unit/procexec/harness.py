"""Drive the sans-IO bridge as smtpd and the runtime would, with a fake clock."""

from __future__ import annotations

from collections import deque

from opensmtpd.procexec import Bridge, Settings
from opensmtpd.table.wire import imsg
from opensmtpd.table.wire.events import Op, Reply
from opensmtpd.table.wire.services import Service

STAMP = 1700000000.25
TS = "1700000000.250000"  # STAMP as the child reads it
TABLE = "aliases"


class Harness:
    def __init__(self, **settings: object) -> None:
        self.now = 1000.0
        self.bridge = Bridge(Settings(**settings), pid=4242,  # type: ignore[arg-type]
                             wallclock=lambda: STAMP)
        self._ops: deque[Op | None] = deque()
        self._framer = imsg.Framer()
        self.pids = iter(range(100, 10000))

    # --- smtpd's side ---

    def open(self, table: str = TABLE) -> None:
        self._ops.append(None)
        self.bridge.receive_smtpd(imsg.open_request(table, 1), self.now)
        assert self.replies() == [None]  # the empty OK, exactly (§1.6)

    def ask(self, op: Op, service: Service | None = None, key: str | None = None, *,
            code: int | None = None) -> None:
        self._ops.append(op)
        self.bridge.receive_smtpd(imsg.request(op, service, key, 1, code), self.now)

    def replies(self) -> list[Reply | None]:
        """Every reply written to smtpd so far, judged exactly as smtpd 6.8 judges them
        (imsg.parse_reply raises where smtpd would exit)."""
        self._framer.feed(self.bridge.take_smtpd_output())
        out = []
        while (msg := self._framer.next_message()) is not None:
            out.append(imsg.parse_reply(self._ops.popleft(), *msg))
        return out

    # --- the child's side ---

    def spawn(self) -> int:
        assert self.bridge.spawn_due(self.now)
        pid = next(self.pids)
        self.bridge.child_started(pid, self.now)
        return pid

    def sent(self) -> list[str]:
        data = self.bridge.take_child_output().decode()
        return data.splitlines()

    def child(self, text: str) -> None:
        self.bridge.receive_child(text.encode("utf-8", "surrogatepass"), self.now)

    def native_child(self, *services: str) -> int:
        """OPEN, spawn, and the 0.1 handshake with ``services`` registered."""
        self.open()
        pid = self.spawn()
        assert self.sent() == ["config|smtpd-version|7.6.0-procexec", "config|protocol|0.1",
                               f"config|tablename|{TABLE}", "config|ready"]
        self.child("".join(f"register|{s}\n" for s in services) + "register|ready\n")
        return pid

    def later(self, seconds: float) -> None:
        self.now += seconds
        self.bridge.tick(self.now)

    def killed(self) -> str:
        """The runtime obeys a kill request: returns the reason."""
        reason = self.bridge.kill_reason
        assert reason is not None
        self.bridge.child_exited("killed", self.now)
        return reason

    def last_id(self, line: str, field: int) -> str:
        return line.split("|")[field]


def lookup_line(h: Harness, service: str = "alias", key: str = "root") -> tuple[str, str]:
    """The one 0.1 request line the child got, and its id."""
    (line,) = h.sent()
    fields = line.split("|")
    assert fields[:6] == ["table", "0.1", TS, TABLE, "lookup", service], line
    assert fields[7] == key
    return line, fields[6]
