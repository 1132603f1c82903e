"""The filter protocol, sans-IO, both ends (h11-shaped): the second tier of
``opensmtpd.filter``, for tools, drivers and tests that speak the protocol themselves.

    from opensmtpd.filter.wire import FilterSide, Result
    side = FilterSide()
    side.receive_data(data)                      # smtpd's bytes, any pieces
    while (event := side.next_event()) is not None:
        out = side.send(Result(event, None))     # (for a Query) -> b"filter-result|…|proceed\\n"

``FilterSide`` is a filter's end, ``SmtpdSide`` smtpd's (it raises
``opensmtpd.wire.ProtocolViolation`` where smtpd would exit). Both take and give the
events of ``events``; ``decisions`` builds and checks what a query is answered;
``dataline`` keeps message lines dot-stuffed; ``parse`` reads single lines.
Reference: filter-protocol.md.
"""

from ...wire import ProtocolViolation
from .dataline import END, for_smtpd, output_lines, stuff, unstuff
from .decisions import (
    Decision,
    InvalidDecision,
    check_reply,
    disconnect,
    fit,
    junk,
    proceed,
    reject,
    report,
    rewrite,
    to_wire,
)
from .events import (
    PHASES,
    REPORT_CLASSES,
    REPORT_EVENTS,
    RESPONSE_PHASES,
    SMTP_IN,
    SMTP_OUT,
    SUBSYSTEMS,
    Answer,
    Config,
    DataLine,
    DataLines,
    Event,
    Malformed,
    Query,
    Registration,
    Report,
    Result,
    UnknownReport,
)
from .filter_side import MAX_LINE, FilterSide
from .parse import max_line, order, parse_config, parse_line, parse_version
from .smtpd_side import SmtpdSide, protocol_of, smtpd_config

__all__ = [
    "END", "MAX_LINE", "PHASES", "REPORT_CLASSES", "REPORT_EVENTS", "RESPONSE_PHASES",
    "SMTP_IN", "SMTP_OUT", "SUBSYSTEMS", "Answer", "Config", "DataLine", "DataLines",
    "Decision", "Event", "FilterSide", "InvalidDecision", "Malformed", "ProtocolViolation",
    "Query", "Registration", "Report", "Result", "SmtpdSide", "UnknownReport", "check_reply",
    "disconnect", "fit", "for_smtpd", "junk", "max_line", "order", "output_lines",
    "parse_config", "parse_line", "parse_version", "proceed", "protocol_of", "reject",
    "report", "rewrite", "smtpd_config", "stuff", "to_wire", "unstuff",
]
