#!/usr/bin/python3
"""A FAKE table backend, broken on purpose, for proving the conformance battery can FAIL.

No real backend misbehaves on demand; this one serves "alice" (credentials
"alice:$6$salt$hash", userinfo "1000:1000:/home/alice") and is otherwise correct. argv[1]
is the protocol ("native": smtpd 7.6's, "imsg": smtpd <= 7.5's; over the library's
codecs), argv[2] the one fault ("none" for a correct table):

  native:
    wrong-id          every reply carries an id smtpd did not send (smtpd exits)
  imsg:
    notfound-unknown  not-found for a service number it does not know, even for alice
                      (smtpd would bounce mail the table never judged)
    bad-userinfo      userinfo "x:y:/home/alice" (smtpd cannot parse it: -1)
    fail-type         replies of type PROC_TABLE_FAIL (smtpd exits: "bad response")
"""

import os
import sys

from opensmtpd.table.wire import imsg, native
from opensmtpd.table.wire.events import (
    Answer,
    Error,
    Found,
    Hello,
    NotFound,
    Op,
    Ready,
    Request,
    Updated,
)
from opensmtpd.table.wire.services import Service

PROTOCOL, FAULT = sys.argv[1], sys.argv[2]
DATA = {Service.CREDENTIALS: "alice:$6$salt$hash", Service.USERINFO: "1000:1000:/home/alice"}


def answer(request):
    if request.op is Op.UPDATE:
        return Updated()
    if request.service is None:  # a service number this table does not know
        return NotFound() if FAULT == "notfound-unknown" else Error("unknown service")
    if request.key != "alice" or request.op is Op.FETCH:
        return NotFound()
    if request.op is Op.CHECK:
        return Found()
    value = DATA.get(request.service)
    if value is None:
        return Error(f"{request.service} is not served")
    if request.service is Service.USERINFO and FAULT == "bad-userinfo":
        value = "x:y:/home/alice"
    return Found(value)


def serve(side, write_reply):
    while data := os.read(0, 65536):
        side.receive_data(data)
        while (event := side.next_event()) is not None:
            if isinstance(event, Request):
                write_reply(event, answer(event))
            elif isinstance(event, Hello) and PROTOCOL == "imsg":
                os.write(0, side.send(Ready()))


if PROTOCOL == "native":
    side = native.TableSide()

    def write(request, reply):
        rid = request.id
        if FAULT == "wrong-id":
            rid = "f" * len(rid) if rid != "f" * len(rid) else "0"
        os.write(1, side.send(Answer(request.op, rid, reply)))

    os.write(1, side.send(Ready((Service.CREDENTIALS, Service.USERINFO))))
    serve(side, write)
else:
    side = imsg.TableSide(os.getpid())

    def write(request, reply):
        data = side.send(Answer(request.op, request.id, reply))
        if FAULT == "fail-type":  # the same reply, typed PROC_TABLE_FAIL (1) instead of OK (0)
            data = imsg.message(imsg.PROC_TABLE_FAIL, data[imsg.HEADER_SIZE:], os.getpid())
        os.write(0, data)

    serve(side, write)
