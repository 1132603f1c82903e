"""A filter whose handlers misbehave on cue (the parameter names the misdeed).

argv: [sync|async|message|async-message]. Deadline 0.2 s for async handlers.
"""

import asyncio
import sys
import time

from opensmtpd.filter import Filter, disconnect, junk, reject, report, rewrite

MODE = sys.argv[1] if len(sys.argv) > 1 else "sync"
ASYNC = MODE.startswith("async")
f = Filter("fuzz", on_error="tempfail" if "message" in MODE else "proceed", deadline=0.2)
PHASES = ("connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data",
          "rset", "quit", "noop", "help", "wiz", "commit")


def decide(param):
    word = param.partition("-")[0]
    if word == "reject":
        return reject("550 5.7.1 Not today")
    if word == "junk":
        return junk()
    if word == "rewrite":
        return rewrite(param + "x")
    if word == "report":
        return report("reported " + param)
    if word == "raise":
        raise RuntimeError("handler bug: " + param)
    if word == "bad":
        return 42
    if word == "disc":
        return disconnect("421 4.7.0 Bye")
    if word == "surrogate":
        return reject("550 \ud800")
    if word == "cr":
        return rewrite("a\rb")
    if word == "long":
        return reject("550 " + "x" * 5000)
    return None


def transform(line):
    word = line.partition("-")[0].rpartition(" ")[2]
    if word == "raise":
        raise RuntimeError("data handler bug")
    if word == "surrogate":
        return "\ud800"
    if word == "dup" or line.startswith("body r"):
        return [line, line]
    if word == "drop":
        return []
    if word == "dot":
        return ".hidden"
    return None


def seen(session, event):
    session.state["events"] = session.state.get("events", 0) + 1
    if "raise" in str(getattr(event, "identity", "")):
        raise RuntimeError("report handler bug")


if ASYNC:

    async def phase(session, query):
        if query.param.startswith("slow"):
            await asyncio.sleep(0.5)
        await asyncio.sleep(0)
        return decide(query.param)

    async def seen_async(session, event):
        await asyncio.sleep(0)
        seen(session, event)

    f.on_report("*", subsystem="*")(seen_async)
else:

    def phase(session, query):
        if query.param.startswith("slow"):
            time.sleep(0.01)
        return decide(query.param)

    f.on_report("*", subsystem="*")(seen)

f.on_phase(*PHASES)(phase)

if "message" in MODE:

    def message(session, lines):
        out = [f"X-Session: {session.id}"]
        for line in lines:
            out.extend([line] if transform(line) is None else
                       [transform(line)] if isinstance(transform(line), str) else transform(line))
        return out

    if ASYNC:

        async def message_async(session, lines):
            await asyncio.sleep(0)
            return message(session, lines)

        f.on_message(message_async)
    else:
        f.on_message(message)
elif ASYNC:

    async def line_async(session, line):
        await asyncio.sleep(0)
        return transform(line)

    f.on_data_line(line_async)
else:

    def line_sync(session, line):
        return transform(line)

    f.on_data_line(line_sync)

f.run()
