"""Which dialect table-procexec speaks to its child, in one place (sans-IO).

- ``native``: the smtpd 7.6 protocol (table-protocols.md §3). The handshake goes after
  smtpd's OPEN, so the child gets ``config|tablename|<name>``; requests and replies are
  ``table|0.1|ts|NAME|op|svc|id|key`` / ``op-result|id|…``, ids of 8 hex digits.
- ``2020``: the seed's table-procexec dialect (§2): no handshake, ``table-result|…`` (or
  the article's ``table-response|…``) replies, ids of 16 hex digits; requests in the
  article's named form (``table|0.1|ts|NAME|op|id|…``, what go-opensmtpd and
  py-opensmtpd parse) unless the form is "unnamed" (the never-merged C branch's).
- ``auto``, the probe (docs/table-procexec.md, "Dialect detection")::

      native --fails--> 2020, the next child at once --fails--> native, after the back-off
      native --registers--> native for good;   2020 --answers well--> 2020 for good

  "Fails" is anything short of the expected answer: an exit, a wrong or no answer to
  the handshake, a line that is no reply, a request's deadline missed. Once the dialect
  is known (or forced), a failure says nothing about it: the bridge's own policy
  (back-off, restart after repeated misses) applies.

The bridge asks this object which bytes to send and how to read the child's lines
(``handshake``, ``registration``, ``request``, ``parse_reply``), and tells it what the
child did (``answered``, ``failed``): nothing else in the bridge knows which dialect is
spoken or whether it is still being probed.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from ..table.wire import native, procexec2020
from ..table.wire.events import Error, Op, Reply
from ..table.wire.services import Service
from ..wire import ProtocolViolation

log = logging.getLogger("opensmtpd.procexec")

NATIVE, DIALECT_2020 = "native", "2020"
# What the child reads in config|smtpd-version: the protocol it is spoken to is 7.6's,
# by table-procexec on behalf of an older smtpd (same shape as "7.6.0-portable").
SMTPD_VERSION = "7.6.0-procexec"


class Restart(enum.Enum):
    """When the next child starts after a failed probe."""

    AT_ONCE = "at once"  # the 0.1 handshake failed: the 2020 dialect is tried right away
    BACKOFF = "after the back-off"  # the 2020 dialect failed too: round and round, slowly


class Dialect:
    """The dialect of the current (or next) child, and what its failures mean for it."""

    __slots__ = ("_registering", "current", "known", "named", "native", "parse_reply",
                 "request")

    # The codec of the current dialect, called for every request and reply: for the 0.1
    # protocol, native.request and native.parse_reply themselves (no frame in between).
    request: Callable[[Op, str, str, Service | None, str | None, str], bytes]
    """``request(op, table, child_id, service, key, stamp)``: the line the child gets."""
    parse_reply: Callable[[Op, str, str], Reply]
    """``parse_reply(op, child_id, line)``: ProtocolViolation when malformed (the message
    never quotes a value: it may be a secret)."""

    def __init__(self, protocol: str = "auto", form_2020: str = "named") -> None:
        self.known: str | None = None if protocol == "auto" else protocol
        self.named = form_2020 == "named"
        self._registering: list[Service] = []
        self._switch(self.known or NATIVE)

    @property
    def probing(self) -> bool:
        return self.known is None

    # --- what the child hears and how its replies read ---

    def handshake(self, table: str) -> bytes | None:
        """What a new child gets first (None: nothing, it is asked at once)."""
        if not self.native:
            return None
        self._registering = []
        return native.handshake(table, SMTPD_VERSION)

    def registration(self, line: str) -> tuple[Service, ...] | None:
        """One line of the child's answer to the handshake: None until ``register|ready``,
        then the services it registered (once each, in order), and the child speaks 0.1.
        ProtocolViolation: that line is no answer to the handshake."""
        try:
            service = native.parse_registration(line)
        except ProtocolViolation as exc:
            if not line.startswith("register|"):
                raise
            log.warning("child registered %s: ignored", exc)  # smtpd 7.6 would exit
            return None
        if service is not None:
            self._registering.append(service)
            return None
        self.known = NATIVE
        return tuple(dict.fromkeys(self._registering))

    def child_id(self, number: int) -> str:
        return f"{number & 0xFFFFFFFF:08x}" if self.native else f"{number:016x}"

    def _request_2020(self, op: Op, table: str, child_id: str, service: Service | None,
                      key: str | None, stamp: str) -> bytes:
        return procexec2020.request(op, child_id, service, key, stamp,
                                    table=table if self.named else None)

    @staticmethod
    def _parse_2020(op: Op, child_id: str, line: str) -> Reply:
        reply = procexec2020.parse_reply(op, child_id, line)
        if isinstance(reply, Error) and reply.reason != "failure":
            raise ProtocolViolation("no table-result reply to this request")
        return reply

    # --- what the child did ---

    def answered(self) -> None:
        """A well-formed reply to a request: a 2020 probe succeeded, for good."""
        if self.known is None:
            self.known = self.current
            log.info("the child answers in the %s dialect: keeping it", self.current)

    def failed(self, why: str) -> Restart | None:
        """The current child failed (``why``: how). Dialect known: None, the failure is no
        evidence about it. Probing: the next child hears the other dialect; returns when
        that child starts."""
        if self.known is not None:
            return None
        if self.native:
            self._switch(DIALECT_2020)
            log.warning("the child did not register (%s): trying the 2020 dialect", why)
            return Restart.AT_ONCE
        self._switch(NATIVE)
        log.warning("the 2020 dialect did not work either (%s): back to the 0.1 handshake", why)
        return Restart.BACKOFF

    def _switch(self, dialect: str) -> None:
        self.current = dialect  # what the current (or next) child hears
        self.native = native_ = dialect == NATIVE
        self.request = native.request if native_ else self._request_2020
        self.parse_reply = native.parse_reply if native_ else self._parse_2020
