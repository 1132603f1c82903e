#!/usr/bin/python3
"""A table speaking the smtpd 7.6 protocol without the library, misbehaving on demand.

argv[1]: a mode file, read at start and for every request:
  ok | garbage (a line that is no reply) | hang:SECONDS (then answers, late) |
  exit (dies mid-request) | crash-start (dies before the handshake)
argv[2]: a table file of "key value" lines, served for userinfo and alias lookups.
Every misdeed is announced on stderr with the pid, so tests can find and kill it.
"""

import os
import sys
import time


def mode():
    try:
        with open(sys.argv[1]) as handle:
            return handle.read().strip()
    except OSError:
        return "ok"


def say(text):
    print(f"fault_table pid {os.getpid()}: {text}", file=sys.stderr, flush=True)


def send(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


if mode() == "crash-start":
    say("crashing at start")
    sys.exit(3)
with open(sys.argv[2]) as handle:
    DATA = dict(line.split(None, 1) for line in handle if line.strip())

for raw in sys.stdin:
    line = raw.rstrip("\n")
    if line.startswith("config|"):
        if line == "config|ready":
            send("register|userinfo\nregister|alias\nregister|ready")
        continue
    fields = line.split("|", 7)
    op = fields[4]
    if op == "update":
        send(f"update-result|{fields[5]}|ok")
        continue
    rid, key = fields[6], fields[7] if len(fields) > 7 else ""
    now = mode()
    if now == "garbage":
        say(f"writing garbage instead of answering {key}")
        send("this is not a reply")
        continue
    if now.startswith("hang:"):
        say(f"hanging {now[5:]}s on {key}")
        time.sleep(float(now[5:]))
    if now == "exit":
        say(f"exiting while asked for {key}")
        sys.exit(1)
    value = DATA.get(key, "").strip()
    if op == "lookup" and value:
        send(f"lookup-result|{rid}|found|{value}")
    elif op == "check" and key in DATA:
        send(f"check-result|{rid}|found")
    else:
        send(f"{op}-result|{rid}|not-found")
