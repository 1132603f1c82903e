"""The conformance battery: judge a backend's replies the way smtpd would.

Each check yields a Result: "ok", "FAIL" (smtpd would exit, hang, or misread the
answer) or "warn" (legal but below what smtpd-tables(7) asks, e.g. an error without
a message). Keys and values are never printed for credentials or auth.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .driver import BackendExited, BackendTimeout, Driver, ProtocolViolation
from .events import Failed, Found, NotFound, Op, Reply, Updated
from .imsg import ProtocolViolation as ImsgViolation
from .services import InvalidValue, Service, validate_value

# A key for each service shaped like what smtpd sends (lab-7.6 REPORT §2.3).
PROBE_KEYS = {
    Service.ALIAS: "root", Service.DOMAIN: "example.org", Service.CREDENTIALS: "alice",
    Service.NETADDR: "127.0.0.1", Service.USERINFO: "root", Service.SOURCE: "127.0.0.1",
    Service.MAILADDR: "root@example.org", Service.ADDRNAME: "127.0.0.1",
    Service.MAILADDRMAP: "alice", Service.RELAYHOST: "example.org",
    Service.STRING: "alice", Service.REGEX: "root@example.org",
}
SECRET = (Service.CREDENTIALS, Service.AUTH)
MAX_KEY = 1023  # smtpd lower-cases keys into a 1024-byte buffer (§1.5)


@dataclass(frozen=True)
class Result:
    status: str  # "ok" | "FAIL" | "warn"
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:4} {self.name}: {self.detail}"


def _shown(service: Service, reply: Reply) -> str:
    if isinstance(reply, Found) and reply.value is not None:
        return "found <value hidden>" if service in SECRET else f"found {reply.value[:60]!r}"
    if isinstance(reply, Failed):
        return f"error {reply.reason!r}" if reply.reason else "error (no message)"
    return {NotFound: "not-found", Updated: "ok"}.get(type(reply), type(reply).__name__)


class Battery:
    def __init__(self, start: Callable[[], Driver], protocol: str) -> None:
        self.start, self.protocol = start, protocol
        self.driver: Driver | None = None

    def run(self) -> Iterator[Result]:
        try:
            self.driver = self.start()
        except (ProtocolViolation, ImsgViolation, BackendExited, BackendTimeout, OSError) as exc:
            yield Result("FAIL", "handshake", f"{type(exc).__name__}: {exc}")
            return
        yield from self._handshake()
        services = self.driver.services or tuple(PROBE_KEYS)
        for service in services:
            if service is Service.AUTH:
                yield self._ask("check auth", Op.CHECK, service, "alice:probe-password")
                continue
            key = PROBE_KEYS[service]
            yield self._ask(f"check {service}", Op.CHECK, service, key)
            yield self._ask(f"lookup {service}", Op.LOOKUP, service, key)
            yield self._ask(f"fetch {service}", Op.FETCH, service, None)
        yield from self._edges(services)
        yield self._ask("update", Op.UPDATE, None, None)
        yield self._quiet()
        yield self._eof()

    def _handshake(self) -> Iterator[Result]:
        assert self.driver is not None
        if self.protocol == "native":
            names = ", ".join(s.value for s in self.driver.services)
            yield Result("ok", "handshake", f"registered {names}")
        elif self.protocol == "imsg":
            yield Result("ok", "handshake", "OPEN acknowledged with an empty OK")
        else:
            yield Result("ok", "handshake", "none in the 2020 dialect")

    def _edges(self, services: Sequence[Service]) -> Iterator[Result]:
        base = next((s for s in services if s in PROBE_KEYS), Service.DOMAIN)
        yield self._ask(f"long key ({MAX_KEY} bytes)", Op.LOOKUP, base, "a" * MAX_KEY)
        if self.protocol == "native":
            yield self._ask("key with '|' (last field)", Op.CHECK, base, "a|b@example.org")
            unregistered = [s for s in PROBE_KEYS if s not in services]
            if unregistered:  # smtpd 7.6 sends them anyway (lab-7.6 E13)
                yield self._unregistered(unregistered[0])
        if self.protocol == "imsg":
            yield self._ask("unknown service number 0x4000", Op.LOOKUP, None, "root",
                            code=0x4000, must_fail=True)

    def _unregistered(self, service: Service) -> Result:
        """Only a warning when the backend dies: smtpd sends an unregistered service only
        if the table is used for it in smtpd.conf, a configuration the admin controls."""
        name = f"unregistered service {service}"
        result = self._ask(name, Op.LOOKUP, service, PROBE_KEYS[service])
        if result.status != "FAIL" or "exit" not in result.detail:
            return result
        assert self.driver is not None
        self.driver.close(timeout=2)
        self.driver = self.start()  # carry on with a fresh backend
        return Result("warn", name, f"{result.detail}; never use this table for {service}")

    def _ask(self, name: str, op: Op, service: Service | None, key: str | None, *,
             code: int | None = None, must_fail: bool = False) -> Result:
        driver = self.driver
        assert driver is not None
        try:
            reply = driver.query(op, service, key, service_code=code)
        except (ProtocolViolation, ImsgViolation) as exc:
            return Result("FAIL", name, f"smtpd would exit: {exc}")
        except BackendTimeout as exc:
            return Result("FAIL", name, f"smtpd would hang: {exc}")
        except BackendExited as exc:
            return Result("FAIL", name, f"smtpd would exit: {exc}")
        shown = _shown(service, reply) if service else _shown(Service.STRING, reply)
        if must_fail and not isinstance(reply, Failed):
            return Result("FAIL", name, f"{shown}: an unknown service must be an error")
        if isinstance(reply, Found) and reply.value is not None and service is not None:
            try:
                validate_value(service, reply.value)
            except InvalidValue as exc:
                return Result("FAIL", name, f"{shown}: smtpd cannot parse it ({exc}): 4xx")
        if isinstance(reply, Failed) and not reply.reason and self.protocol == "native":
            return Result("warn", name, "error without a message (smtpd-tables(7) wants one)")
        return Result("ok", name, shown)

    def _quiet(self) -> Result:
        assert self.driver is not None
        if select.select([self.driver.fd], [], [], 0.2)[0]:
            return Result("FAIL", "no unsolicited output",
                          "the backend wrote something nobody asked for: smtpd would exit")
        return Result("ok", "no unsolicited output", "nothing pending")

    def _eof(self) -> Result:
        assert self.driver is not None
        status = self.driver.close(timeout=5)
        if status is None:
            return Result("warn", "exit on EOF", "still running 5s after EOF (killed)")
        return Result("ok", "exit on EOF", f"exited with status {status}")


def summary(results: Sequence[Result]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "warn", "FAIL")}
    verdict = "PASS" if not counts["FAIL"] else "FAIL"
    return f"{verdict}: {counts['ok']} ok, {counts['warn']} warn, {counts['FAIL']} failed"
