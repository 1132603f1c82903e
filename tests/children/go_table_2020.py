#!/usr/bin/python3
"""A 2020 table that behaves exactly like one built on poolpOrg/go-opensmtpd.

The library the seed's article introduces: table/table.go at HEAD (3eb0886, 2020-05-28;
table-protocols.md §4). Its Dispatch, byte for byte:

- stdin through a bufio.Scanner (ScanLines): a line ends at "\\n", one trailing "\\r" is
  dropped, a last line without "\\n" still counts; a line that does not fit the 64 KiB
  token buffer (no "\\n" in the first 65536 bytes) ends Scan(), and so does EOF: then
  os.Exit(0), silently;
- each line is split on every "|"; fewer than 6 atoms, atoms[0] != "table" or
  atoms[1] != "0.1" is log.Fatalf (a timestamped line on stderr, exit status 1);
- table name atoms[3], op atoms[4], token atoms[5], service atoms[6] (an unknown name
  becomes "string"), key "|".join(atoms[7:]); any other op is log.Fatalf;
- atoms[6] missing on check/lookup/fetch, or a callback never registered, is a Go
  runtime panic (exit status 2);
- replies through fmt.Printf on an unbuffered os.Stdout, exactly as Boolean, Result,
  Failure and Updated print them (``table-result|<token>|…``).

The program around it is the article's kind of table: OnCheck and OnLookup only (so a
fetch panics, as it would in Go), served from argv[1], a file of "key value" lines (or
keys alone): check is found when the key is there, lookup gives its value. Strings are
bytes here as in Go: nothing is decoded.
"""

import os
import sys
import time

MAX_TOKEN = 64 * 1024  # bufio.MaxScanTokenSize
SERVICES = {b"alias", b"domain", b"credentials", b"netaddr", b"userinfo", b"source",
            b"mailaddr", b"addrname", b"mailaddrmap", b"relayhost", b"string", b"regex"}


# --- the Go runtime and standard library, as far as Dispatch uses them ---

def fatalf(message):
    """log.Fatalf: "2006/01/02 15:04:05 message" on stderr, then os.Exit(1)."""
    os.write(2, time.strftime("%Y/%m/%d %H:%M:%S ").encode() + message + b"\n")
    os._exit(1)


def panic(message):
    os.write(2, b"panic: runtime error: " + message + b"\n\ngoroutine 1 [running]:\n"
             b"github.com/poolpOrg/go-opensmtpd/table.Dispatch()\n")
    os._exit(2)


def printf(text):
    """fmt.Printf to os.Stdout, which Go never buffers: one write per call."""
    view = memoryview(text)
    while view:
        view = view[os.write(1, view):]


def scan_lines():
    """bufio.Scanner(os.Stdin) with ScanLines and the default 64 KiB limit."""
    buf = b""
    eof = False
    while True:
        end = buf.find(b"\n", 0, MAX_TOKEN)
        if end >= 0:
            line, buf = buf[:end], buf[end + 1:]
            yield line[:-1] if line.endswith(b"\r") else line
            continue
        if eof:
            if buf:  # the last line, without its "\n"
                line, buf = buf, b""
                yield line[:-1] if line.endswith(b"\r") else line
            return
        if len(buf) >= MAX_TOKEN:
            return  # bufio.ErrTooLong: Scan() returns false
        try:
            data = os.read(0, 4096)
        except OSError:
            return
        if data:
            buf += data
        else:
            eof = True


# --- go-opensmtpd's table package ---

def failure(token):
    printf(b"table-result|" + token + b"|failure\n")


def updated(token):
    printf(b"table-result|" + token + b"|updated\n")


def boolean(token, result):
    printf(b"table-result|" + token + (b"|found\n" if result else b"|not-found\n"))


def result(token, *values):
    if not values:
        printf(b"table-result|" + token + b"|not-found\n")
    else:
        printf(b"table-result|" + token + b"|found|" + values[0] + b"\n")


CALLBACKS = {b"update": lambda token, table_name: updated(token)}


def name_to_lookup_service(name):
    return name if name in SERVICES else b"string"


def dispatch():
    for line in scan_lines():
        atoms = line.split(b"|")
        if len(atoms) < 6:
            fatalf(b"missing atoms: " + line)
        if atoms[0] != b"table":
            fatalf(b"invalid stream: " + atoms[0])
        if atoms[1] != b"0.1":
            fatalf(b"unsupported protocol version: " + atoms[1])
        table_name, token, op = atoms[3], atoms[5], atoms[4]
        if op not in (b"update", b"check", b"lookup", b"fetch"):
            fatalf(b"unsupported operation: " + op)
        args = [token, table_name]
        if op != b"update":
            if len(atoms) < 7:
                panic(b"index out of range [6] with length %d" % len(atoms))
            args.append(name_to_lookup_service(atoms[6]))
            if op != b"fetch":
                args.append(b"|".join(atoms[7:]))
        callback = CALLBACKS.get(op)
        if callback is None:
            panic(b"invalid memory address or nil pointer dereference")
        callback(*args)
    os._exit(0)


# --- the program ---

ENTRIES = {}
with open(sys.argv[1], "rb") as handle:
    for raw in handle:
        key, _, value = raw.strip().partition(b" ")
        if key and not key.startswith(b"#"):
            ENTRIES[key] = value.strip()


def on_check(token, table_name, service, key):
    boolean(token, key in ENTRIES)


def on_lookup(token, table_name, service, key):
    value = ENTRIES.get(key)
    if value:
        result(token, value)
    else:
        result(token)


CALLBACKS[b"check"] = on_check
CALLBACKS[b"lookup"] = on_lookup
dispatch()
