#!/usr/bin/python3
"""A small proc-exec filter: greylisting-style tempfail for clients without rDNS, a
spamtrap, and a header added to every message.

    filter "example" proc-exec "/usr/bin/python3 /path/to/filter_example.py"
    listen on 0.0.0.0 filter "example"
"""

import sys

from opensmtpd.filter import Filter, reject

f = Filter(on_error="tempfail")  # a handler bug answers 451: the sender retries later


@f.on_report("link-connect")
def connected(session, event):
    print(f"connection from {event.src} ({event.rdns})", file=sys.stderr)  # smtpd logs it


@f.on_phase("mail-from")
def mail_from(session, query):
    if session.rdns == "<unknown>":
        return reject("451 4.7.1 No reverse DNS: try again later")
    return None


@f.on_phase("rcpt-to")
def rcpt_to(session, query):
    if query.param.lower().startswith("spamtrap@"):
        return reject("550 5.1.1 No such user")
    return None


@f.on_message
def add_header(session, lines):
    return [f"X-Filtered-Session: {session.id}", *lines]


f.run()
