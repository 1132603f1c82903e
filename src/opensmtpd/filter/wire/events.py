"""The events of the filter protocol, both ways (sans-IO; filter-protocol.md §2–§4).

smtpd -> filter: the handshake (``Config``), report events, filter-phase queries
(``Query``), data lines (``DataLine``), and ``Malformed`` for what cannot be parsed.
filter -> smtpd: ``Registration``, ``Result`` (a decision for a query) and ``DataLines``.
Each side sends one set and receives the other (``FilterSide``, ``SmtpdSide``).

Events are slotted dataclasses, not frozen ones: a frozen dataclass costs five times more
to build, and tens of thousands of them pass every second. Treat them as read-only.

Every report carries the fields of its event in the order of protocol 0.7, whatever the
version on the wire (``parse.py`` swaps the fields of older versions).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ...smtpd_version import NO_WIZ_PHASE, SmtpdVersion, parse_smtpd_version
from .decisions import Decision

SMTP_IN = "smtp-in"
SMTP_OUT = "smtp-out"
SUBSYSTEMS = (SMTP_IN, SMTP_OUT)

# smtp_events[] (lka_filter.c), identical from 0.4 to 0.7 (§3).
REPORT_EVENTS = (
    "link-connect", "link-disconnect", "link-greeting", "link-identify", "link-tls",
    "link-auth", "tx-reset", "tx-begin", "tx-mail", "tx-rcpt", "tx-envelope", "tx-data",
    "tx-commit", "tx-rollback", "protocol-client", "protocol-server", "filter-report",
    "filter-response", "timeout",
)
# filter_execs[] (§4.1): all registrable from 0.4 to smtpd 7.8; help and wiz are never
# queried. smtpd 7.9 dropped wiz: registering it is fatal there (Config.accepts_phase).
PHASES = (
    "connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data",
    "data-line", "rset", "quit", "noop", "help", "wiz", "commit",
)
# The phase names filter-response reports use (§3): "connected" and "tls" differ.
RESPONSE_PHASES = (
    "connected", "helo", "ehlo", "tls", "auth", "mail-from", "rcpt-to", "data", "data-line",
    "rset", "quit", "noop", "help", "wiz", "commit",
)


@dataclass(slots=True)
class Config:
    """The handshake is over (``config|ready``): what smtpd said about itself.

    ``items`` keeps every ``config|key|value`` line, known or not, in order.
    ``protocol`` is only sent by smtpd >= 7.6; ``subsystems`` is empty before 6.7.
    """

    smtpd_version: str = ""
    protocol: str | None = None
    session_timeout: int | None = None
    subsystems: frozenset[str] = frozenset()
    admd: str | None = None
    items: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        for name, value in self.items:
            if name == key:
                return value
        return default

    @property
    def version(self) -> SmtpdVersion | None:
        """``smtpd_version`` as a comparable value; None when absent or unknown."""
        return parse_smtpd_version(self.smtpd_version)

    def accepts_phase(self, phase: str) -> bool:
        """Whether registering filter ``phase`` is safe with this smtpd.

        ``wiz`` is fatal from 7.9 on ("Unrecognized report name"): it is registered only
        with an smtpd known to be older. Every other phase exists in every version.
        """
        if phase != "wiz":
            return True
        version = self.version
        return version is not None and version < NO_WIZ_PHASE

    @property
    def accepts_report_decision(self) -> bool:
        """``filter-result|…|report|TEXT`` is fatal before 7.6 (§1); 7.6 announces 0.7."""
        return self.protocol is not None


# --- report events ---


@dataclass(slots=True)
class Report:
    """``report|VERSION|TIMESTAMP|SUBSYSTEM|EVENT|SESSION[|params]``."""

    event: ClassVar[str] = ""
    version: str
    timestamp: float
    subsystem: str
    session: str

    @property
    def name(self) -> str:
        return self.event


@dataclass(slots=True)
class LinkConnect(Report):
    event: ClassVar[str] = "link-connect"
    rdns: str
    fcrdns: str
    src: str
    dest: str


@dataclass(slots=True)
class LinkDisconnect(Report):
    event: ClassVar[str] = "link-disconnect"


@dataclass(slots=True)
class LinkGreeting(Report):
    event: ClassVar[str] = "link-greeting"
    hostname: str


@dataclass(slots=True)
class LinkIdentify(Report):
    event: ClassVar[str] = "link-identify"
    method: str
    identity: str


@dataclass(slots=True)
class LinkTLS(Report):
    event: ClassVar[str] = "link-tls"
    tls: str


@dataclass(slots=True)
class LinkAuth(Report):
    """``result`` is pass, fail or error; ``username`` is strnvis-encoded by smtpd."""

    event: ClassVar[str] = "link-auth"
    result: str
    username: str


@dataclass(slots=True)
class TxReset(Report):
    event: ClassVar[str] = "tx-reset"
    msgid: str


@dataclass(slots=True)
class TxBegin(Report):
    event: ClassVar[str] = "tx-begin"
    msgid: str


@dataclass(slots=True)
class TxMail(Report):
    """``result`` is ok, permfail or tempfail; ``address`` may be empty (``<>``)."""

    event: ClassVar[str] = "tx-mail"
    msgid: str
    result: str
    address: str


@dataclass(slots=True)
class TxRcpt(Report):
    event: ClassVar[str] = "tx-rcpt"
    msgid: str
    result: str
    address: str


@dataclass(slots=True)
class TxEnvelope(Report):
    event: ClassVar[str] = "tx-envelope"
    msgid: str
    envelope_id: str


@dataclass(slots=True)
class TxData(Report):
    event: ClassVar[str] = "tx-data"
    msgid: str
    result: str


@dataclass(slots=True)
class TxCommit(Report):
    event: ClassVar[str] = "tx-commit"
    msgid: str
    size: int


@dataclass(slots=True)
class TxRollback(Report):
    event: ClassVar[str] = "tx-rollback"
    msgid: str


@dataclass(slots=True)
class ProtocolClient(Report):
    event: ClassVar[str] = "protocol-client"
    command: str


@dataclass(slots=True)
class ProtocolServer(Report):
    event: ClassVar[str] = "protocol-server"
    response: str


@dataclass(slots=True)
class FilterReport(Report):
    event: ClassVar[str] = "filter-report"
    kind: str
    filter_name: str
    message: str


@dataclass(slots=True)
class FilterResponse(Report):
    """``phase`` uses the report names (``connected``, ``tls``); ``param`` is the reply
    text of reject and disconnect, the new value of rewrite, the text of report."""

    event: ClassVar[str] = "filter-response"
    phase: str
    response: str
    param: str | None


@dataclass(slots=True)
class Timeout(Report):
    event: ClassVar[str] = "timeout"


@dataclass(slots=True)
class UnknownReport(Report):
    """An event or subsystem this library does not know (new ones appear without a
    version bump, §5.5): kept raw, never fatal."""

    raw_event: str
    params: str | None

    @property
    def name(self) -> str:
        return self.raw_event


REPORT_CLASSES: dict[str, type[Report]] = {cls.event: cls for cls in (
    LinkConnect, LinkDisconnect, LinkGreeting, LinkIdentify, LinkTLS, LinkAuth, TxReset,
    TxBegin, TxMail, TxRcpt, TxEnvelope, TxData, TxCommit, TxRollback, ProtocolClient,
    ProtocolServer, FilterReport, FilterResponse, Timeout)}


# --- filter phases ---


@dataclass(slots=True)
class Query:
    """``filter|VERSION|TIMESTAMP|smtp-in|PHASE|SESSION|TOKEN|PARAM``: smtpd waits for
    exactly one answer. ``param`` is the raw last field (``""`` for the phases without
    one; ``rdns|src`` for connect — see ``rdns`` and ``src``)."""

    version: str
    timestamp: float
    subsystem: str
    phase: str
    session: str
    token: str
    param: str

    @property
    def rdns(self) -> str:
        """connect only: the client's PTR name (``<unknown>`` when there is none)."""
        return self.param.rpartition("|")[0] if self.phase == "connect" else ""

    @property
    def src(self) -> str:
        """connect only: the client address without port (``[v6]`` or ``local``)."""
        return self.param.rpartition("|")[2] if self.phase == "connect" else ""


@dataclass(slots=True)
class DataLine:
    """One line of the message, raw: still dot-stuffed; ``.`` alone ends the message."""

    version: str
    timestamp: float
    subsystem: str
    session: str
    token: str
    line: str

    phase: ClassVar[str] = "data-line"


# --- everything else ---


@dataclass(slots=True)
class Malformed:
    """A line that could not be parsed; ``line`` is its (bounded) beginning.

    For a query whose session and token could still be read, ``query`` lets the runtime
    answer it anyway (smtpd would otherwise wait forever).
    """

    reason: str
    line: str
    query: Query | DataLine | None = None


Event = Config | Report | Query | DataLine | Malformed
"""What smtpd sends a filter (``FilterSide.next_event``)."""


# --- filter -> smtpd ---


@dataclass(slots=True)
class Registration:
    """What the filter asks for (``register|…`` lines, then ``register|ready``): report
    events per subsystem (``*`` for all) and smtp-in filter phases."""

    reports: Mapping[str, Collection[str]]
    phases: Collection[str]


@dataclass(slots=True)
class Result:
    """The answer to one query: a decision (``decisions.py``); None proceeds."""

    query: Query
    decision: Decision | None


@dataclass(slots=True)
class DataLines:
    """Message lines sent for data-line ``query``: unstuffed text, one line each; ``end``
    sends the final ``.`` (owed exactly once, when answering the ``.`` smtpd sent)."""

    query: DataLine
    lines: Sequence[str]
    end: bool = False


Answer = Registration | Result | DataLines
"""What a filter sends smtpd (``FilterSide.send``, ``SmtpdSide.next_event``)."""
