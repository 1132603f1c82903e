#!/usr/bin/python3
"""A 2020 table that behaves exactly like one built on poolpOrg/py-opensmtpd.

The Python library the seed's article introduces: opensmtpd/table.py at HEAD (2487144,
2020-05-28; table-protocols.md §4), re-told here (it is not installed anywhere) with the
same behaviour:

- stdin and stdout reconfigured to UTF-8 (strict: undecodable input raises and exits 1);
  sys.stdin.readline(), and EOF ends dispatch() (exit 0);
- each line goes through line.strip() (so white space around the key is lost), then is
  split on every "|": fewer than 6 atoms, atoms[0] != "table", atoms[1] != "0.1" or an
  unknown op writes the reason to stderr and exits 1;
- table name atoms[3], op atoms[4], token atoms[5], service atoms[6] (the raw string),
  key "|".join(atoms[7:]); a missing atoms[6] or a callback never registered raises
  (traceback, exit 1);
- replies written and flushed one by one, exactly as failure, updated, boolean and
  result write them (``table-result|<token>|…``).

The program around it registers check and lookup (as the article's example does) and
serves argv[1], a file of "key value" lines (or keys alone).
"""

import sys

sys.stdin.reconfigure(encoding="utf-8")
sys.stdout.reconfigure(encoding="utf-8")


# --- py-opensmtpd's table module ---

def _write(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def failure(token):
    _write(f"table-result|{token}|failure\n")


def updated(token):
    _write(f"table-result|{token}|updated\n")


def boolean(token, found):
    _write(f"table-result|{token}|{'found' if found else 'not-found'}\n")


def result(token, value=None):
    _write(f"table-result|{token}|not-found\n" if value is None
           else f"table-result|{token}|found|{value}\n")


callbacks = {"update": lambda token, table_name: updated(token),
             "check": None, "lookup": None, "fetch": None}


def _give_up(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def dispatch():
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        atoms = line.strip().split("|")
        if len(atoms) < 6:
            _give_up(f"missing atoms: {line.strip()}")
        if atoms[0] != "table":
            _give_up(f"invalid stream: {atoms[0]}")
        if atoms[1] != "0.1":
            _give_up(f"unsupported protocol version: {atoms[1]}")
        table_name, op, token = atoms[3], atoms[4], atoms[5]
        if op == "update":
            callbacks["update"](token, table_name)
        elif op in ("check", "lookup"):
            callbacks[op](token, table_name, atoms[6], "|".join(atoms[7:]))
        elif op == "fetch":
            callbacks["fetch"](token, table_name, atoms[6])
        else:
            _give_up(f"unsupported operation: {op}")


# --- the program ---

ENTRIES = {}
with open(sys.argv[1], encoding="utf-8") as handle:
    for raw in handle:
        key, _, value = raw.strip().partition(" ")
        if key and not key.startswith("#"):
            ENTRIES[key] = value.strip() or None


def on_check(token, table_name, service, key):
    boolean(token, key in ENTRIES)


def on_lookup(token, table_name, service, key):
    result(token, ENTRIES.get(key))


callbacks["check"] = on_check
callbacks["lookup"] = on_lookup
dispatch()
