"""What filter-prometheus measures, and from which report events (filter-protocol.md §3).

Every series has a ``direction`` label (smtp-in or smtp-out) and otherwise only labels
from closed sets: address family, result, phase, reply code or class. Addresses, host
names, HELO names and user names never become labels (DESIGN.md invariant 4): per-session
facts live in the session state, which ends with the session.

Durations come from smtpd's own event timestamps, not from when the filter read them.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable

from opensmtpd import __version__
from opensmtpd.filter import (
    RESPONSE_PHASES,
    SMTP_IN,
    SMTP_OUT,
    Filter,
    FilterResponse,
    LinkAuth,
    LinkConnect,
    LinkDisconnect,
    LinkTLS,
    Malformed,
    ProtocolServer,
    Report,
    Session,
    Timeout,
    TxBegin,
    TxCommit,
    TxMail,
    TxRcpt,
    TxRollback,
)

from .families import Cell, Collector, Family

DIRECTIONS = (SMTP_IN, SMTP_OUT)
ADDRESS_FAMILIES = ("inet4", "inet6", "unix", "other")
TX_RESULTS = ("ok", "permfail", "tempfail", "other")
AUTH_RESULTS = ("pass", "fail", "error", "other")
REPLY_CLASSES = ("2xx", "3xx", "4xx", "5xx", "other")
SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
EVENTS = ("link-connect", "link-disconnect", "link-tls", "link-auth", "tx-begin", "tx-mail",
          "tx-rcpt", "tx-commit", "tx-rollback", "protocol-server", "filter-response",
          "timeout")
_CODE = re.compile(r"[2-5][0-9][0-9]\Z")
_PHASES = frozenset(RESPONSE_PHASES)


def address_family(address: str) -> str:
    """inet4, inet6 or unix from smtpd's ``addr:port`` text (``[v6]:port``, ``unix:…``)."""
    if address[:1] == "[":
        return "inet6"
    if address[:5] == "unix:":
        return "unix"
    host, _, port = address.rpartition(":")
    if host.count(".") == 3 and port.isdigit() and host.replace(".", "").isdigit():
        return "inet4"
    return "other"


_CLASS_OF = {f"{code}{end}": f"{code // 100}xx" for code in range(200, 600)
             for end in ("", " ")}


def reply_class(response: str) -> str | None:
    """``2xx``… for the last line of a reply; None for a continuation line (``250-…``)."""
    if response[3:4] == "-":
        return None
    return _CLASS_OF.get(response[:4], "other")


class _Direction:
    """The series of one direction, resolved once (no label lookups per event)."""

    def __init__(self, m: SmtpdMetrics, direction: str) -> None:
        self.direction = direction
        self.active = {f: m.sessions_active.cell(direction, f) for f in ADDRESS_FAMILIES}
        self.opened = {f: m.sessions.cell(direction, f) for f in ADDRESS_FAMILIES}
        self.duration = m.session_duration.histo(direction)
        self.tls_active = m.tls_active.cell(direction)
        self.tls = m.tls.cell(direction)
        self.auth = {r: m.auth.cell(direction, r) for r in AUTH_RESULTS}
        self.begun = m.tx_begun.cell(direction)
        self.committed = m.tx_committed.cell(direction)
        self.rolled_back = m.tx_rolled_back.cell(direction)
        self.mail_from = {r: m.mail_from.cell(direction, r) for r in TX_RESULTS}
        self.rcpt_to = {r: m.rcpt_to.cell(direction, r) for r in TX_RESULTS}
        self.size = m.message_size.histo(direction)
        self.to_commit = m.time_to_commit.histo(direction)
        self.replies = {c: m.replies.cell(direction, c) for c in REPLY_CLASSES}
        self.timeouts = m.timeouts.cell(direction)
        self.unknown = m.unknown_events.cell(direction)


class SmtpdMetrics:
    """The metric families, and the report handlers that feed them."""

    def __init__(self) -> None:
        self.sessions_active = Family(
            "gauge", "smtpd_sessions_active", "SMTP sessions open now, by address family "
            "(of the client for smtp-in, of the remote server for smtp-out).",
            ("direction", "family"))
        self.sessions = Family(
            "counter", "smtpd_sessions_total", "SMTP sessions opened (link-connect), by "
            "address family.", ("direction", "family"))
        self.session_duration = Family(
            "histogram", "smtpd_session_duration_seconds", "Duration of SMTP sessions, "
            "from link-connect to link-disconnect.", ("direction",), DURATION_BUCKETS)
        self.tls_active = Family(
            "gauge", "smtpd_tls_sessions_active", "SMTP sessions open now over TLS.",
            ("direction",))
        self.tls = Family(
            "counter", "smtpd_tls_sessions_total", "TLS handshakes completed in SMTP "
            "sessions (link-tls).", ("direction",))
        self.auth = Family(
            "counter", "smtpd_auth_total", "SMTP AUTH attempts by result: pass, fail "
            "(bad credentials), error (temporary failure).", ("direction", "result"))
        self.tx_begun = Family(
            "counter", "smtpd_transactions_begun_total", "Mail transactions begun (MAIL "
            "FROM accepted).", ("direction",))
        self.tx_committed = Family(
            "counter", "smtpd_transactions_committed_total", "Mail transactions committed "
            "(message accepted: queued for smtp-in, delivered for smtp-out).",
            ("direction",))
        self.tx_rolled_back = Family(
            "counter", "smtpd_transactions_rolled_back_total", "Mail transactions rolled "
            "back (RSET, refused at DATA or commit, session ended mid-transaction).",
            ("direction",))
        self.mail_from = Family(
            "counter", "smtpd_mail_from_total", "MAIL FROM commands by result: ok, "
            "permfail (5xx), tempfail (4xx).", ("direction", "result"))
        self.rcpt_to = Family(
            "counter", "smtpd_rcpt_to_total", "RCPT TO commands by result: ok, permfail "
            "(5xx), tempfail (4xx).", ("direction", "result"))
        self.message_size = Family(
            "histogram", "smtpd_message_size_bytes", "Size of committed messages "
            "(tx-commit).", ("direction",), SIZE_BUCKETS)
        self.time_to_commit = Family(
            "histogram", "smtpd_time_to_commit_seconds", "Time from MAIL FROM accepted "
            "(tx-begin) to commit (tx-commit).", ("direction",), COMMIT_BUCKETS)
        self.rejections = Family(
            "counter", "smtpd_filter_rejections_total", "Commands refused by a filter "
            "(filter-response reject), by phase and SMTP reply code.",
            ("direction", "phase", "code"))
        self.disconnections = Family(
            "counter", "smtpd_filter_disconnections_total", "Sessions closed by a filter "
            "(filter-response disconnect), by phase and SMTP reply code.",
            ("direction", "phase", "code"))
        self.replies = Family(
            "counter", "smtpd_replies_total", "SMTP replies by class (sent by smtpd for "
            "smtp-in, received by it for smtp-out).", ("direction", "class"))
        self.timeouts = Family(
            "counter", "smtpd_timeouts_total", "SMTP sessions that timed out.", ("direction",))
        self.build_info = Family(
            "gauge", "smtpd_exporter_build_info", "Always 1: versions of filter-prometheus, "
            "of the smtpd it runs under, and of Python.",
            ("version", "smtpd_version", "python_version"))
        self.unparsed = Family(
            "counter", "smtpd_exporter_unparsed_lines_total", "Lines from smtpd that could "
            "not be parsed.")
        self.unknown_events = Family(
            "counter", "smtpd_exporter_unknown_events_total", "Report events of names or "
            "subsystems this exporter does not know (direction other for unknown "
            "subsystems).", ("direction",))
        self.evicted = Family(
            "counter", "smtpd_exporter_sessions_evicted_total", "Sessions forgotten without "
            "a link-disconnect because the session table was full.")
        self.collector = Collector([
            self.sessions_active, self.sessions, self.session_duration, self.tls_active,
            self.tls, self.auth, self.tx_begun, self.tx_committed, self.tx_rolled_back,
            self.mail_from, self.rcpt_to, self.message_size, self.time_to_commit,
            self.rejections, self.disconnections, self.replies, self.timeouts,
            self.build_info, self.unparsed, self.unknown_events, self.evicted])
        self._by_direction = {d: _Direction(self, d) for d in DIRECTIONS}
        self._unparsed = self.unparsed.cell()
        self._unknown_other = self.unknown_events.cell("other")
        self._evicted = self.evicted.cell()
        self._decisions: dict[tuple[str, str, str, str], Cell] = {}
        self.set_build_info("")

    # --- wiring ---

    def attach(self, f: Filter) -> None:
        """Register the report handlers (only the events used: fewer lines from smtpd)."""
        handlers: dict[str, Callable[..., object]] = {
            "link-connect": self.link_connect, "link-disconnect": self.link_disconnect,
            "link-tls": self.link_tls, "link-auth": self.link_auth,
            "tx-begin": self.tx_begin, "tx-mail": self.tx_mail, "tx-rcpt": self.tx_rcpt,
            "tx-commit": self.tx_commit, "tx-rollback": self.tx_rollback,
            "protocol-server": self.protocol_server, "filter-response": self.filter_response,
            "timeout": self.timeout,
        }
        assert tuple(handlers) == EVENTS
        for event, handler in handlers.items():
            f.on_report(event, subsystem="*")(handler)
        f.on_config(lambda config: self.set_build_info(config.smtpd_version))
        f.on_malformed(self.malformed)
        f.on_unknown(self.unknown)
        f.on_evict(self.evict)

    def set_build_info(self, smtpd_version: str) -> None:
        self.build_info.series.clear()
        self.build_info.cell(__version__, smtpd_version[:32],
                             platform.python_version()).value = 1

    # --- report handlers ---

    def link_connect(self, session: Session, event: LinkConnect) -> None:
        d = self._by_direction[event.subsystem]
        # smtp-in: the client; smtp-out: the remote server (src is our own address)
        family = address_family(event.src if d.direction == SMTP_IN else event.dest)
        state = session.state
        previous = state.get("family")
        if previous is None:  # a repeated link-connect (smtp-out retry) is one session
            d.opened[family].value += 1
        else:
            d.active[previous].value -= 1
        d.active[family].value += 1
        state["family"] = family

    def link_disconnect(self, session: Session, event: LinkDisconnect) -> None:
        d = self._by_direction[event.subsystem]
        self._close(d, session)  # smtp-out may disconnect a session never connected
        if session.started is not None:
            d.duration.observe(max(0.0, event.timestamp - session.started))

    def _close(self, d: _Direction, session: Session) -> None:
        state = session.state
        family = state.pop("family", None)
        if family is not None:
            d.active[family].value -= 1
        if state.pop("tls", None):
            d.tls_active.value -= 1

    def evict(self, session: Session) -> None:
        self._evicted.value += 1
        if session.subsystem in self._by_direction:
            self._close(self._by_direction[session.subsystem], session)

    def link_tls(self, session: Session, event: LinkTLS) -> None:
        d = self._by_direction[event.subsystem]
        d.tls.value += 1
        if not session.state.get("tls"):
            session.state["tls"] = True
            d.tls_active.value += 1

    def link_auth(self, session: Session, event: LinkAuth) -> None:
        auth = self._by_direction[event.subsystem].auth
        (auth.get(event.result) or auth["other"]).value += 1

    def tx_begin(self, session: Session, event: TxBegin) -> None:
        self._by_direction[event.subsystem].begun.value += 1
        session.state["tx"] = event.timestamp

    def tx_mail(self, session: Session, event: TxMail) -> None:
        counts = self._by_direction[event.subsystem].mail_from
        (counts.get(event.result) or counts["other"]).value += 1

    def tx_rcpt(self, session: Session, event: TxRcpt) -> None:
        counts = self._by_direction[event.subsystem].rcpt_to
        (counts.get(event.result) or counts["other"]).value += 1

    def tx_commit(self, session: Session, event: TxCommit) -> None:
        d = self._by_direction[event.subsystem]
        d.committed.value += 1
        d.size.observe(max(0, event.size))
        begun = session.state.pop("tx", None)
        if begun is not None:
            d.to_commit.observe(max(0.0, event.timestamp - begun))

    def tx_rollback(self, session: Session, event: TxRollback) -> None:
        self._by_direction[event.subsystem].rolled_back.value += 1
        session.state.pop("tx", None)

    def protocol_server(self, session: Session, event: ProtocolServer) -> None:
        response = event.response
        if response[3:4] != "-":  # the last line of a reply (EHLO sends several)
            replies = self._by_direction[event.subsystem].replies
            replies[_CLASS_OF.get(response[:4], "other")].value += 1

    def filter_response(self, session: Session, event: FilterResponse) -> None:
        if event.response not in ("reject", "disconnect"):
            return
        phase = event.phase if event.phase in _PHASES else "other"
        code = (event.param or "")[:3]
        if not _CODE.match(code):
            code = "other"
        key = (event.subsystem, event.response, phase, code)
        cell = self._decisions.get(key)
        if cell is None:
            family = self.rejections if event.response == "reject" else self.disconnections
            cell = self._decisions[key] = family.cell(event.subsystem, phase, code)
        cell.value += 1

    def timeout(self, session: Session, event: Timeout) -> None:
        self._by_direction[event.subsystem].timeouts.value += 1

    # --- the exporter's own health ---

    def malformed(self, event: Malformed) -> None:
        self._unparsed.value += 1

    def unknown(self, session: Session, event: Report) -> None:
        d = self._by_direction.get(event.subsystem)
        (d.unknown if d is not None else self._unknown_other).value += 1

