"""A line-protocol table child (no library: stdlib only, quick to start) that misbehaves
on cue, for table-procexec: the key names the misdeed.

Speaks the smtpd 7.6 protocol (0.1) on fds 0/1 as table-procexec runs it.
"""

import os
import sys
import time

out = os.fdopen(1, "wb", buffering=0)


def send(data):
    out.write(data)


def main():
    stdin = os.fdopen(0, "rb", buffering=0)
    buf = b""
    ready = False
    while True:
        data = stdin.read(65536)
        if not data:
            return 0
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not ready:
                if line == b"config|ready":
                    ready = True
                    send(b"register|alias\nregister|credentials\nregister|domain\n"
                         b"register|source\nregister|string\nregister|mailaddrmap\n"
                         b"register|userinfo\nregister|netaddr\nregister|mailaddr\n"
                         b"register|relayhost\nregister|addrname\nregister|regex\n"
                         b"register|ready\n")
                continue
            fields = line.split(b"|", 7)
            if len(fields) < 6:
                send(b"garbage in, garbage out\n")
                continue
            op = fields[4]
            if op == b"update":
                send(b"update-result|" + fields[5] + b"|ok\n")
                continue
            ident = fields[6] if len(fields) > 6 else b"?"
            key = fields[7] if len(fields) > 7 else b""
            head = op + b"-result|" + ident + b"|"
            word = key.partition(b"-")[0]
            if word == b"garbage":
                send(b"this is not a reply\n")
            elif word == b"wrongid":
                send(op + b"-result|deadbeef|found|x\n")
            elif word == b"double":
                send(head + b"not-found\n" + head + b"not-found\n")
            elif word == b"partial":
                send(head + b"fou")
                time.sleep(0.01)
                send(b"nd|partial@example.org\n")
            elif word == b"huge":
                send(head + b"found|" + b"h" * 20000 + b"\n")
            elif word == b"nulvalue":
                send(head + b"found|a\0b\n")
            elif word == b"crlf":
                send(head + b"not-found\r\n")
            elif word == b"exit":
                return 3
            elif word == b"silent-exit":
                os.close(1)
                return 0
            elif word == b"hang":
                time.sleep(0.5)
            elif word == b"error":
                send(head + b"error|backend %s down\n")
            elif op == b"check":
                send(head + (b"found\n" if len(key) % 2 else b"not-found\n"))
            elif op == b"fetch":
                send(head + b"found|192.0.2.9\n")
            else:
                send(head + b"found|" + (key or b"x") + b"\n")


sys.exit(main())
