"""Write OpenSMTPD proc-exec filters in Python, for every filter protocol (0.4 to 0.7).

Two APIs: the ``Filter`` object with decorators, and module-level callbacks in the spirit
of the seed (``filter.on_report(...)``, ``filter.on_filter(...)``, ``filter.dispatch()``).
"""

from ..smtpd_version import SmtpdVersion
from .app import DEFAULT_TEMPFAIL, Filter
from .callbacks import (
    configure,
    dispatch,
    on_config,
    on_data_line,
    on_filter,
    on_message,
    on_report,
)
from .events import (
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
from .responses import (
    Decision,
    InvalidResponse,
    disconnect,
    junk,
    proceed,
    reject,
    report,
    rewrite,
)
from .session import Session

__all__ = [
    "DEFAULT_TEMPFAIL", "PHASES", "REPORT_EVENTS", "RESPONSE_PHASES", "SMTP_IN", "SMTP_OUT",
    "Config", "DataLine", "Decision", "Filter", "FilterReport", "FilterResponse",
    "InvalidResponse", "LinkAuth", "LinkConnect", "LinkDisconnect", "LinkGreeting", "LinkIdentify",
    "LinkTLS", "Malformed", "ProtocolClient", "ProtocolServer", "Query", "Report", "Session",
    "SmtpdVersion", "Timeout", "TxBegin", "TxCommit", "TxData", "TxEnvelope", "TxMail", "TxRcpt",
    "TxReset", "TxRollback", "UnknownReport", "configure", "disconnect", "dispatch", "junk",
    "on_config", "on_data_line", "on_filter", "on_message", "on_report", "proceed", "reject",
    "report", "rewrite",
]
