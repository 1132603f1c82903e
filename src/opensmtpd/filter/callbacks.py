"""The callback API in the spirit of the seed's table module API:

    from opensmtpd import filter

    def connected(session, event):
        print("connect from", event.src, file=sys.stderr)

    def mail_from(session, query):
        return filter.reject("550 5.7.1 No") if query.param.endswith("@spam.test") else None

    filter.on_report("link-connect", connected)
    filter.on_filter("mail-from", mail_from)
    filter.dispatch()

Everything goes to one module-level ``Filter`` (``filter.default``).
"""

from __future__ import annotations

from typing import Any

from .app import Filter, Handler
from .events import SMTP_IN

default = Filter()


def on_report(event: str, cb: Handler, subsystem: str = SMTP_IN) -> Handler:
    """``cb(session, event)`` for a report event (a name or ``*``)."""
    return default.on_report(event, cb, subsystem=subsystem)


def on_filter(phase: str, cb: Handler) -> Handler:
    """``cb(session, query) -> Decision | None`` for a filter phase."""
    return default.on_phase(phase, cb)


def on_data_line(cb: Handler) -> Handler:
    return default.on_data_line(cb)


def on_message(cb: Handler) -> Handler:
    return default.on_message(cb)


def on_config(cb: Handler) -> Handler:
    return default.on_config(cb)


def configure(**options: Any) -> None:
    """Set ``on_error``, ``tempfail_reply`` or ``deadline`` of the default filter."""
    for name in ("on_error", "tempfail_reply", "deadline"):
        if name in options:
            setattr(default, name, options.pop(name))
    if options:
        raise TypeError(f"unknown options: {', '.join(options)}")


def dispatch() -> None:
    """Serve smtpd on stdin/stdout until EOF."""
    default.run()
