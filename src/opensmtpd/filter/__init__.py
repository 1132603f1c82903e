"""Write OpenSMTPD proc-exec filters in Python, for every filter protocol (0.4 to 0.7).

    from opensmtpd.filter import Filter, reject

    f = Filter()

    @f.on_phase("mail-from")
    def mail_from(session, query):
        if query.param.endswith("@spam.test"):
            return reject("550 5.7.1 Not from you")

    f.run()

The decisions keep the protocol's names (proceed, junk, reject, disconnect, rewrite,
report). The protocol itself, sans-IO and both ends, is ``opensmtpd.filter.wire``.
"""

from ..smtpd_version import SmtpdVersion
from ._filter import Filter
from ._handlers import DEFAULT_TEMPFAIL
from ._session import Session, Sessions
from .wire.decisions import (
    Decision,
    InvalidDecision,
    disconnect,
    junk,
    proceed,
    reject,
    report,
    rewrite,
)
from .wire.events import (
    PHASES,
    REPORT_EVENTS,
    RESPONSE_PHASES,
    SMTP_IN,
    SMTP_OUT,
    Config,
    DataLine,
    FilterReport,
    FilterResponse,
    LinkAuth,
    LinkConnect,
    LinkDisconnect,
    LinkGreeting,
    LinkIdentify,
    LinkTLS,
    Malformed,
    ProtocolClient,
    ProtocolServer,
    Query,
    Report,
    Timeout,
    TxBegin,
    TxCommit,
    TxData,
    TxEnvelope,
    TxMail,
    TxRcpt,
    TxReset,
    TxRollback,
    UnknownReport,
)

__all__ = [
    "DEFAULT_TEMPFAIL", "PHASES", "REPORT_EVENTS", "RESPONSE_PHASES", "SMTP_IN", "SMTP_OUT",
    "Config", "DataLine", "Decision", "Filter", "FilterReport", "FilterResponse",
    "InvalidDecision", "LinkAuth", "LinkConnect", "LinkDisconnect", "LinkGreeting",
    "LinkIdentify", "LinkTLS", "Malformed", "ProtocolClient", "ProtocolServer", "Query",
    "Report", "Session", "Sessions", "SmtpdVersion", "Timeout", "TxBegin", "TxCommit",
    "TxData", "TxEnvelope", "TxMail", "TxRcpt", "TxReset", "TxRollback", "UnknownReport",
    "disconnect", "junk", "proceed", "reject", "report", "rewrite",
]
