"""The conformance battery: judge a backend's replies the way smtpd would.

Each check yields a Result: "ok", "FAIL" (smtpd would exit, hang, or misread the
answer), "warn" (smtpd copes, but smtpd-tables(7) or this library asks for more, e.g.
an error without a message) or "skip" (cannot be judged with what the backend holds).
Only what smtpd itself judges is a FAIL, whatever data the backend serves: a probe key
the table does not hold may be answered not-found or error, both legal. Values are
never printed for credentials or auth, nor auth keys.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..wire import ProtocolViolation
from .driver import BackendExited, BackendTimeout, Driver
from .wire.events import Error, Found, NotFound, Op, Reply, Updated
from .wire.services import InvalidValue, Service, smtpd_parse_error, validate_value

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
UNKNOWN_CODE = 0x4000  # a service number no smtpd has (imsg)
STATUSES = ("ok", "warn", "FAIL", "skip")


@dataclass(frozen=True)
class Result:
    status: str  # "ok" | "FAIL" | "warn" | "skip"
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:4} {self.name}: {self.detail}"


def _shown(service: Service, reply: Reply) -> str:
    if isinstance(reply, Found) and reply.value is not None:
        return "found <value hidden>" if service in SECRET else f"found {reply.value[:60]!r}"
    if isinstance(reply, Error):
        return f"error {reply.reason!r}" if reply.reason else "error (no message)"
    return {Found: "found", NotFound: "not-found", Updated: "ok"}.get(type(reply),
                                                                      type(reply).__name__)


class Battery:
    """``keys``: a probe key per service (``--key SERVICE=KEY``), e.g. one the table
    holds, instead of the one in PROBE_KEYS."""

    def __init__(self, start: Callable[[], Driver], protocol: str,
                 keys: Mapping[Service, str] | None = None) -> None:
        self.start, self.protocol = start, protocol
        self.keys = {**PROBE_KEYS, **(keys or {})}
        self.driver: Driver | None = None
        self.held: dict[str, str] = {}  # key -> the probe that found it: the table holds it

    def run(self) -> Iterator[Result]:
        try:
            self.driver = self.start()
        except (ProtocolViolation, BackendExited, BackendTimeout, OSError) as exc:
            yield Result("FAIL", "handshake", f"{type(exc).__name__}: {exc}")
            return
        yield from self._handshake()
        services = self.driver.services or tuple(PROBE_KEYS)
        for service in services:
            if service is Service.AUTH:
                yield self._ask("check auth", Op.CHECK, service,
                                self.keys.get(service, "alice:probe-password"))
                continue
            key = self.keys[service]
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
            yield self._unknown_service()

    def _unregistered(self, service: Service) -> Result:
        """Only a warning when the backend dies: smtpd sends an unregistered service only
        if the table is used for it in smtpd.conf, a configuration the admin controls."""
        name = f"unregistered service {service}"
        result = self._ask(name, Op.LOOKUP, service, self.keys[service])
        if result.status != "FAIL" or "exit" not in result.detail:
            return result
        assert self.driver is not None
        self.driver.close(timeout=2)
        self.driver = self.start()  # carry on with a fresh backend
        return Result("warn", name, f"{result.detail}; never use this table for {service}")

    def _unknown_service(self) -> Result:
        """smtpd <= 7.5 sends service numbers older backends do not know (relayhost,
        string, regex to an extras 6.7 table: §1.4). For a key the table holds, only
        error is right: not-found would make smtpd bounce (5xx) on the word of a table
        that could not judge. For a key it does not hold, not-found is as true as error,
        so without such a key there is nothing to judge."""
        name = f"unknown service number {UNKNOWN_CODE:#x}"
        if not self.held:
            return Result("skip", name, "no key the table holds is known (none of the probes "
                                        "was found): give one with --key SERVICE=KEY")
        key, where = next(iter(self.held.items()))
        shown_key = repr(key[:60]) + ("…" if len(key) > 60 else "")
        reply = self._query(name, Op.LOOKUP, None, key, code=UNKNOWN_CODE)
        if isinstance(reply, Result):
            return reply
        shown = _shown(Service.STRING, reply)
        if isinstance(reply, Error):
            return Result("ok", name, f"{shown} for {shown_key}, which the table holds")
        if isinstance(reply, NotFound):
            return Result("FAIL", name, f"not-found for {shown_key}, which the table holds "
                                        f"({where} found it): smtpd would bounce mail (5xx) on "
                                        "a service the table cannot know; answer error")
        return Result("warn", name, f"{shown} for {shown_key} on a service the table cannot "
                                    "know (smtpd makes -1 of it)")

    def _query(self, name: str, op: Op, service: Service | None, key: str | None,
               code: int | None = None) -> Reply | Result:
        """The reply as smtpd reads it, or the FAIL of a backend smtpd would not survive."""
        driver = self.driver
        assert driver is not None
        try:
            return driver.query(op, service, key, service_code=code)
        except ProtocolViolation as exc:
            return Result("FAIL", name, f"smtpd would exit: {exc}")
        except BackendTimeout as exc:
            return Result("FAIL", name, f"smtpd would hang: {exc}")
        except BackendExited as exc:
            return Result("FAIL", name, f"smtpd would exit: {exc}")

    def _ask(self, name: str, op: Op, service: Service | None, key: str | None) -> Result:
        reply = self._query(name, op, service, key)
        if isinstance(reply, Result):
            return reply
        shown = _shown(service, reply) if service else _shown(Service.STRING, reply)
        if isinstance(reply, Found) and service is not None:
            if key is not None and op is not Op.FETCH and service is not Service.AUTH:
                self.held.setdefault(key, name)
            if reply.value is not None:
                problem = smtpd_parse_error(service, key, reply.value)
                if problem is not None:
                    return Result("FAIL", name, f"{shown}: smtpd cannot parse it ({problem}): "
                                                "a 4xx where the table meant found")
                try:
                    validate_value(service, reply.value)
                except InvalidValue as exc:
                    return Result("warn", name, f"{shown}: smtpd takes it, but {exc}")
        if isinstance(reply, Error) and not reply.reason and self.protocol == "native":
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
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    verdict = "PASS" if not counts["FAIL"] else "FAIL"
    skipped = f", {counts['skip']} not judged" if counts["skip"] else ""
    return (f"{verdict}: {counts['ok']} ok, {counts['warn']} warn, {counts['FAIL']} failed"
            f"{skipped}")
