"""A table whose handlers misbehave on cue (the key names the misdeed), sync or async.

argv: [sync|async] [deadline, default 0.2 s: "slow" keys exercise the watchdog without
slowing the fuzz much]. The generation is detected from smtpd's first bytes.
"""

import asyncio
import sys
import time

from opensmtpd.table import Table, TempFail

MODE = sys.argv[1] if len(sys.argv) > 1 else "sync"
table = Table(deadline=float(sys.argv[2]) if len(sys.argv) > 2 else 0.2)


def answer(key):
    if key is None:
        return ["192.0.2.7", "192.0.2.8"]
    word = key.partition("-")[0]
    if word == "raise":
        raise RuntimeError(f"handler bug on {key}")
    if word == "tempfail":
        raise TempFail(f"backend down: {key}\r\n%s")
    if word == "badtype":
        return 42
    if word == "newline":
        return "a\nb"
    if word == "surrogate":
        return "x\ud800"
    if word == "nul":
        return "a\0b"
    if word == "long":
        return "x" * 20000
    if word == "list":
        return ["a@example.org", "b@example.org"]
    if word == "none":
        return None
    if word.startswith("percent"):
        return "%s%d%(x)s"
    if "@" in key or ":" in key:
        return key
    return f"{key}@example.org"


def check(key):
    word = key.partition("-")[0]
    if word in ("raise", "tempfail", "badtype", "surrogate"):
        answer(key)
        return "yes"  # not a bool: an invalid answer
    return len(key) % 2 == 0


if MODE == "async":

    @table.lookup()
    @table.lookup("auth")
    async def lookup(key):
        if key.startswith("slow"):
            await asyncio.sleep(0.5)
        await asyncio.sleep(0)
        return answer(key)

    @table.check()
    @table.check("auth")
    async def check_async(key):
        await asyncio.sleep(0)
        return check(key)

    @table.fetch()
    async def fetch():
        return answer(None)

    @table.update
    async def update():
        return None

else:

    @table.lookup()
    @table.lookup("auth")
    def lookup(key):
        if key.startswith("slow"):
            time.sleep(0.3)
        return answer(key)

    table.check()(check)
    table.check("auth")(check)

    @table.fetch()
    def fetch():
        return answer(None)

    @table.update
    def update():
        return None

table.run()
