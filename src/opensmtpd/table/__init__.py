"""Write OpenSMTPD table backends in Python, for every smtpd generation.

Two APIs: the 2020 module API of the seed (``table.on_lookup(cb)``, ``table.dispatch()``)
and the ``Table`` object with handlers that return their answer.
"""

from ..smtpd_version import SmtpdVersion
from .api2020 import (
    boolean,
    dispatch,
    failure,
    on_check,
    on_fetch,
    on_lookup,
    on_update,
    result,
    updated,
)
from .backend import Table, TempFail
from .events import Failed, Found, NotFound, Op, Request, Updated
from .mapping import MappingTable
from .match import domain_match, mailaddr_match, matches, netaddr_match, regex_match
from .services import InvalidValue, Service, validate_value

__all__ = [
    "Failed",
    "Found",
    "InvalidValue",
    "MappingTable",
    "NotFound",
    "Op",
    "Request",
    "Service",
    "SmtpdVersion",
    "Table",
    "TempFail",
    "Updated",
    "boolean",
    "dispatch",
    "domain_match",
    "failure",
    "mailaddr_match",
    "matches",
    "netaddr_match",
    "on_check",
    "on_fetch",
    "on_lookup",
    "on_update",
    "regex_match",
    "result",
    "updated",
    "validate_value",
]
