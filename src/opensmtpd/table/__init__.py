"""Write OpenSMTPD table backends in Python, for every smtpd generation.

Two APIs: the ``Table`` object with handlers that return their answer (and fail by
raising ``TempFail``), and the 2020 module API of the seed (``table.on_lookup(cb)``,
``table.dispatch()``). ``MappingTable`` serves a mapping or a ``file:`` table as smtpd
would. The protocols themselves, sans-IO and both ends, are ``opensmtpd.table.wire``.
"""

from ..smtpd_version import SmtpdVersion
from ._api2020 import (
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
from ._mapping import MappingTable, TableFileError
from ._table import Table, TempFail
from .match import domain_match, mailaddr_match, matches, netaddr_match, regex_match
from .static import StaticEntries
from .wire.events import Error, Found, NotFound, Op, Request, Updated
from .wire.services import InvalidValue, Service, validate_value

__all__ = [
    "Error",
    "Found",
    "InvalidValue",
    "MappingTable",
    "NotFound",
    "Op",
    "Request",
    "Service",
    "SmtpdVersion",
    "StaticEntries",
    "Table",
    "TableFileError",
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
