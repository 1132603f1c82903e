"""The runtime, run for real: backend scripts in a subprocess, driven as smtpd drives them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opensmtpd.table.driver import Driver
from opensmtpd.table.wire import imsg, native, procexec2020
from opensmtpd.table.wire.events import Error, Found, NotFound, Op, Updated
from opensmtpd.table.wire.services import Service

from .helpers import Started, pending

PROTOCOLS = ["native", "imsg", "2020"]
PASSWORD = "Hunter2-s3cret"

BASIC = """
import logging
import sys
from opensmtpd.table import Table

table = Table()

@table.lookup("alias")
def alias(key, request):
    if key == "boom":
        raise RuntimeError("handler bug")
    if key == "noisy":
        print("noise on stderr", file=sys.stderr, flush=True)
        print("noise on stdout", flush=True)
        logging.getLogger("opensmtpd.table").warning("a log line")
    return f"{key}@{request.table or 'none'}.example.org"

@table.check("domain")
def domain(key):
    return key == "example.org"

@table.fetch("source")
def source():
    return ["127.0.0.1", "127.0.0.2"]

table.run()
"""

# argv[1] (the table config) is a file whose creation releases the blocked handlers.
DEADLINE = """
import asyncio
import os
import sys
import time
from opensmtpd.table import Table

RELEASE = sys.argv[1]
table = Table(deadline=0.3)

def blocked():
    for _ in range(1000):
        if os.path.exists(RELEASE):
            return
        time.sleep(0.01)

@table.lookup("alias")
def alias(key):
    if key == "block":
        blocked()
        return "late@example.org"
    return f"{key}@example.org"

@table.lookup("mailaddrmap")
async def maps(key):
    if key == "block":
        for _ in range(1000):
            if os.path.exists(RELEASE):
                break
            await asyncio.sleep(0.01)
        return "late@example.org"
    return f"{key}@example.org"

@table.check("auth")
def auth(key):
    blocked()
    raise RuntimeError(f"cannot check {key}")

table.run()
"""

CONCURRENT = """
import asyncio
from opensmtpd.table import Table

table = Table(deadline=3)
_second = []

def second_seen():
    if not _second:
        _second.append(asyncio.Event())
    return _second[0]

@table.lookup("alias")
async def alias(key):
    if key == "first":
        await second_seen().wait()  # only the second request can release the first
        return "first@example.org"
    if key == "second":
        second_seen().set()
        return "second@example.org"
    if key == "slow":
        await asyncio.sleep(0.2)
    return f"{key}@example.org"

table.run()
"""


def read_imsg(driver: Driver, framer: imsg.Framer, timeout: float = 5.0) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while (msg := framer.next_message()) is None:
        assert pending(driver.fd, deadline - time.monotonic()), "no imsg reply"
        data = os.read(driver.fd, 65536)
        assert data, "backend closed the socket"
        framer.feed(data)
    return msg


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_same_backend_serves_each_generation(start: Started,
                                             make_backend: Callable[..., Path],
                                             protocol: str) -> None:
    driver = start(make_backend(BASIC), protocol=protocol, table="aliases")
    assert driver.lookup(Service.ALIAS, "root") == Found("root@aliases.example.org")
    assert driver.check(Service.DOMAIN, "example.org") == Found()
    assert driver.check(Service.DOMAIN, "example.net") == NotFound()
    assert driver.fetch(Service.SOURCE) == Found("127.0.0.1")
    assert driver.fetch(Service.SOURCE) == Found("127.0.0.2")
    assert driver.update() == Updated()
    if protocol == "native":
        assert driver.services == (Service.ALIAS, Service.DOMAIN, Service.SOURCE)


VERSIONED = """
from opensmtpd.table import Table

table = Table()

@table.lookup("alias")
def alias(key):
    return f"{table.protocol}-{table.smtpd_version}@example.org"

table.run()
"""


@pytest.mark.parametrize(("protocol", "announced", "seen"), [
    ("native", "7.9.0-portable", "native-7.9.0"),
    ("native", "7.6.0-portable", "native-7.6.0"),
    ("native", "someday", "native-None"),  # unknown: None, never a guess
    ("imsg", "", "imsg-None"),  # smtpd <= 7.5 sends no version
    ("2020", "", "2020-None"),
])
def test_handlers_see_the_generation_and_smtpd_version(
        start: Started, make_backend: Callable[..., Path], protocol: str, announced: str,
        seen: str) -> None:
    driver = start(make_backend(VERSIONED), protocol=protocol, smtpd_version=announced)
    assert driver.lookup(Service.ALIAS, "root") == Found(f"{seen}@example.org")


def spawn(script: Path) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """smtpd 7.6's setup: one socket on fd 0 and fd 1, argv[0] the table name."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(["test"], executable=str(script), stdin=theirs.fileno(),
                               stdout=theirs.fileno(), stderr=subprocess.DEVNULL)
    theirs.close()
    ours.settimeout(5)
    return ours, process


def test_detection_waits_for_enough_bytes(make_backend: Callable[..., Path]) -> None:
    sock, process = spawn(make_backend(BASIC))
    try:
        hello = native.handshake("split")
        sock.sendall(hello[:3])  # "con": native? not yet known
        time.sleep(0.1)
        sock.sendall(hello[3:])
        data = b""
        while not data.endswith(b"register|ready\n"):
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
        assert data == b"register|alias\nregister|domain\nregister|source\nregister|ready\n"
    finally:
        sock.close()
        assert process.wait(5) == 0


def test_imsg_open_split_across_reads(make_backend: Callable[..., Path]) -> None:
    sock, process = spawn(make_backend(BASIC))
    try:
        data = imsg.open_request("split") + imsg.request(Op.LOOKUP, Service.ALIAS, "root")
        for piece in (data[:2], data[2:20], data[20:2100], data[2100:]):
            sock.sendall(piece)
            time.sleep(0.02)
        framer = imsg.Framer()
        replies: list[tuple[int, bytes]] = []
        while len(replies) < 2:
            chunk = sock.recv(65536)
            assert chunk
            framer.feed(chunk)
            while (msg := framer.next_message()) is not None:
                replies.append(msg)
        assert imsg.parse_reply(None, *replies[0]) is None
        assert imsg.parse_reply(Op.LOOKUP, *replies[1]) == Found("root@split.example.org")
    finally:
        sock.close()
        assert process.wait(5) == 0


def test_unknown_first_bytes_get_no_answer_and_no_exit(start: Started,
                                                       make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(BASIC), protocol="2020")  # 2020: the driver sends nothing first
    driver.send_raw(b"HELO smtpd\n")
    assert not pending(driver.fd, 0.3)  # anything written would be a reply to nothing
    assert driver.process.poll() is None  # only EOF ends a table
    assert driver.close() == 0


# --- errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_handler_that_raises_gives_an_error_and_the_next_request_is_answered(
        start: Started, make_backend: Callable[..., Path], protocol: str) -> None:
    driver = start(make_backend(BASIC), protocol=protocol)
    assert isinstance(driver.lookup(Service.ALIAS, "boom"), Error)
    assert isinstance(driver.lookup(Service.ALIAS, "boom"), Error)
    assert isinstance(driver.lookup(Service.ALIAS, "root"), Found)
    assert driver.close() == 0
    assert "RuntimeError" in start.stderr(driver)


def test_unregistered_service_is_an_error(start: Started,
                                          make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(BASIC), protocol="native")
    reply = driver.lookup(Service.USERINFO, "root")  # smtpd 7.6 sends it anyway (E13)
    assert isinstance(reply, Error) and reply.reason
    assert isinstance(driver.lookup(Service.ALIAS, "root"), Found)


def test_unknown_imsg_service_number_is_an_error(start: Started,
                                                 make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(BASIC), protocol="imsg")
    assert isinstance(driver.query(Op.LOOKUP, None, "root", service_code=0x4000), Error)
    assert isinstance(driver.lookup(Service.ALIAS, "root"), Found)


def test_native_malformed_line_with_readable_id_gets_an_error_with_that_id(
        start: Started, make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(BASIC), protocol="native")
    driver.send_raw(b"nonsense without id\n")  # no id: nothing to answer
    driver.send_raw(b"table|0.2|0.000000|test|lookup|alias|0badf00d|root\n")
    line = driver.read_line()
    reply = native.parse_reply(Op.LOOKUP, "0badf00d", line)  # the id is the one sent
    assert isinstance(reply, Error) and reply.reason
    assert driver.lookup(Service.ALIAS, "root") == Found("root@test.example.org")
    assert not pending(driver.fd, 0.1)


def test_2020_malformed_line_with_readable_id_gets_a_failure(
        start: Started, make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(BASIC), protocol="2020")
    driver.send_raw(b"table|0.2|0.000000|lookup|00000000000000aa|alias|root\n")
    assert driver.read_line() == "table-result|00000000000000aa|failure"
    assert driver.lookup(Service.ALIAS, "root") == Found("root@test.example.org")


def test_imsg_malformed_request_is_answered_minus_one(
        start: Started, make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(BASIC), protocol="imsg")
    bad = imsg.message(imsg.PROC_TABLE_LOOKUP, imsg.SERVICE_PARAMS.pack(1, 0) + b"no-nul", 0)
    driver.send_raw(bad)
    framer = imsg.Framer()
    assert isinstance(imsg.parse_reply(Op.LOOKUP, *read_imsg(driver, framer)), Error)
    assert driver.lookup(Service.ALIAS, "root") == Found("root@test.example.org")


# --- deadlines ------------------------------------------------------------------------

@pytest.mark.parametrize(("protocol", "service"), [
    ("native", Service.ALIAS), ("imsg", Service.ALIAS), ("2020", Service.ALIAS),
    ("native", Service.MAILADDRMAP), ("imsg", Service.MAILADDRMAP),  # async handlers
])
def test_handler_past_its_deadline(start: Started, make_backend: Callable[..., Path],
                                   tmp_path: Path, protocol: str, service: Service) -> None:
    release = tmp_path / "release"
    driver = start(make_backend(DEADLINE), protocol=protocol, config=str(release))
    began = time.monotonic()
    reply = driver.lookup(service, "block")  # the handler is blocked: only the watchdog answers
    elapsed = time.monotonic() - began
    assert isinstance(reply, Error)
    if protocol == "native":
        assert "deadline" in reply.reason
    assert 0.25 <= elapsed < 3.0  # Table(deadline=0.3); the handler would block for 10 s
    # the handler is still stuck, yet the next request is answered normally
    assert driver.lookup(service, "next") == Found("next@example.org")
    release.touch()  # the stuck handler now returns: its late answer must be dropped
    assert not pending(driver.fd, 0.4)
    assert driver.lookup(Service.ALIAS, "after") == Found("after@example.org")
    assert driver.close() == 0
    assert "late answer dropped" in start.stderr(driver)


# A fake table: its answer() itself overruns the deadline before handing back a coroutine
# (Table.answer never blocks before returning one; a Served table could).
FAKE_SLOW_ANSWER = """
import time
from opensmtpd.table import Found, Table

class FakeSlowAnswer(Table):
    def answer(self, request):
        if request.key == "slow":
            time.sleep(0.6)

            async def late():
                return Found("late@example.org")
            return late()
        return super().answer(request)

table = FakeSlowAnswer(deadline=0.3)

@table.lookup("alias")
def alias(key):
    return f"{key}@example.org"

table.run()
"""


@pytest.mark.parametrize("protocol", ["native", "imsg"])
def test_answer_overrunning_before_its_coroutine_is_answered_once(
        start: Started, make_backend: Callable[..., Path], protocol: str) -> None:
    driver = start(make_backend(FAKE_SLOW_ANSWER), protocol=protocol)
    assert isinstance(driver.lookup(Service.ALIAS, "slow"), Error)  # the watchdog's
    assert not pending(driver.fd, 1.0)  # the coroutine is dropped, never a second answer
    assert driver.lookup(Service.ALIAS, "next") == Found("next@example.org")
    assert driver.close() == 0
    log = start.stderr(driver)
    assert "late answer dropped" in log
    assert "Traceback" not in log and "never awaited" not in log


def test_auth_password_not_logged_on_deadline_or_late_exception(
        start: Started, make_backend: Callable[..., Path], tmp_path: Path) -> None:
    release = tmp_path / "release"
    driver = start(make_backend(DEADLINE), protocol="native", config=str(release))
    assert isinstance(driver.check(Service.AUTH, f"alice:{PASSWORD}"), Error)
    release.touch()  # the handler then raises with the key in its message
    assert not pending(driver.fd, 0.4)
    assert driver.close() == 0
    log = start.stderr(driver)
    assert "alice" in log and "RuntimeError" in log
    assert PASSWORD not in log
    assert PASSWORD.lower() not in log


# --- concurrency ----------------------------------------------------------------------

def test_native_async_handlers_are_in_flight_together(start: Started,
                                                      make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(CONCURRENT), protocol="native")
    driver.send_raw(native.request(Op.LOOKUP, "test", "0000000a", Service.ALIAS, "first"))
    driver.send_raw(native.request(Op.LOOKUP, "test", "0000000b", Service.ALIAS, "second"))
    lines = [driver.read_line(), driver.read_line()]
    by_id = {line.split("|")[1]: line for line in lines}
    assert native.parse_reply(Op.LOOKUP, "0000000a", by_id["0000000a"]) == (
        Found("first@example.org"))
    assert native.parse_reply(Op.LOOKUP, "0000000b", by_id["0000000b"]) == (
        Found("second@example.org"))
    # "first" can only finish after "second" started: both were in flight together
    # (served one at a time, "first" would miss its deadline and be an error). The order
    # the two replies are written in is a race between the asyncio and reader threads.


def test_2020_async_handlers_are_in_flight_together(start: Started,
                                                    make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(CONCURRENT), protocol="2020")
    first, second = "00000000000000aa", "00000000000000bb"
    driver.send_raw(procexec2020.request(Op.LOOKUP, first, Service.ALIAS, "first")
                    + procexec2020.request(Op.LOOKUP, second, Service.ALIAS, "second"))
    lines = [driver.read_line(), driver.read_line()]
    assert sorted(lines) == [f"table-result|{first}|found|first@example.org",
                             f"table-result|{second}|found|second@example.org"]


def test_imsg_async_replies_come_in_request_order(start: Started,
                                                  make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(CONCURRENT), protocol="imsg")
    driver.send_raw(imsg.request(Op.LOOKUP, Service.ALIAS, "slow")
                    + imsg.request(Op.LOOKUP, Service.ALIAS, "fast"))
    framer = imsg.Framer()
    first = imsg.parse_reply(Op.LOOKUP, *read_imsg(driver, framer))
    second = imsg.parse_reply(Op.LOOKUP, *read_imsg(driver, framer))
    assert (first, second) == (Found("slow@example.org"), Found("fast@example.org"))


# --- process life and stdout ------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_eof_ends_the_process_with_status_0(start: Started, make_backend: Callable[..., Path],
                                            protocol: str) -> None:
    driver = start(make_backend(BASIC), protocol=protocol)
    assert isinstance(driver.lookup(Service.ALIAS, "root"), Found)
    assert driver.close() == 0


def test_eof_before_any_byte(start: Started, make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(BASIC), protocol="2020")
    assert driver.close() == 0


@pytest.mark.parametrize("protocol", ["native", "2020", "imsg"])
def test_nothing_but_protocol_on_stdout(start: Started, make_backend: Callable[..., Path],
                                        protocol: str) -> None:
    driver = start(make_backend(BASIC), protocol=protocol)
    assert driver.lookup(Service.ALIAS, "noisy") == Found("noisy@test.example.org")
    assert driver.lookup(Service.ALIAS, "root") == Found("root@test.example.org")
    assert not pending(driver.fd, 0.1)
    assert driver.close() == 0
    log = start.stderr(driver)
    assert "noise on stderr" in log
    assert "noise on stdout" in log  # a handler's print() is diverted to stderr
    assert "a log line" in log


# --- found in review: replies that cannot be encoded, newlines inside client secrets ---

HOSTILE = """
from opensmtpd.table import Table

table = Table()

@table.lookup("string")
def string(key):
    return "\\ud800"  # a lone surrogate: no encoding can put it on the wire

@table.check("auth")
def auth(key):
    return key == "alice:right-password"

@table.lookup("alias")
def alias(key):
    return key + "@example.org"

table.run()
"""


def test_unencodable_answer_is_an_error_and_the_table_lives(
        start: Started, make_backend: Callable[..., Path]) -> None:
    driver = start(make_backend(HOSTILE), protocol="native")
    assert isinstance(driver.lookup(Service.STRING, "x"), Error)
    assert driver.lookup(Service.ALIAS, "root") == Found("root@example.org")


def test_newline_in_auth_key_gets_one_reply_and_no_secret_in_the_log(
        start: Started, make_backend: Callable[..., Path]) -> None:
    """smtpd 7.6/7.7 writes an AUTH key with a raw newline: the tail must not be answered
    (an unsolicited reply is fatal to smtpd) nor logged (it is part of a password)."""
    driver = start(make_backend(HOSTILE), protocol="native")
    crafted = (f"alice:{PASSWORD}\ntable|0.1|0|test|check|auth|00000000|alice:right-password")
    driver.send_raw(native.request(Op.CHECK, "test", "5e6f7a8b", Service.AUTH, crafted))
    reply = native.parse_reply(Op.CHECK, "5e6f7a8b", driver.read_line())
    assert isinstance(reply, Error)
    assert not pending(driver.fd, 0.3)  # nothing for the crafted "00000000" request
    assert driver.check(Service.AUTH, "alice:right-password") == Found()
    driver.close()
    assert PASSWORD not in start.stderr(driver)


HANGING_ASYNC = """
import asyncio
import sys
from opensmtpd.table import Table

table = Table(deadline=0.3)

@table.lookup("alias")
async def alias(key):
    try:
        await asyncio.Event().wait()  # never set
    finally:
        print(f"released {key}", file=sys.stderr, flush=True)

table.run()
"""


@pytest.mark.parametrize("protocol", ["native", "imsg"])
def test_async_handler_past_its_deadline_is_cancelled(
        start: Started, make_backend: Callable[..., Path], protocol: str) -> None:
    """Answered error at the deadline, and the coroutine is cancelled: hung handlers do
    not pile up (one per request) while the backend behind them is down."""
    driver = start(make_backend(HANGING_ASYNC), protocol=protocol)
    for number in range(3):
        assert isinstance(driver.lookup(Service.ALIAS, f"k{number}"), Error)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and start.stderr(driver).count("released") < 3:
        time.sleep(0.05)
    assert start.stderr(driver).count("released") == 3, start.stderr(driver)


# --- the runtime serves anything shaped like _runtime.Served, not only a Table ----------

SERVED = """
from opensmtpd.table._runtime import serve
from opensmtpd.table.wire import Error, Found, Service

class Minimal:
    deadline = 2.0
    services = (Service.ALIAS,)
    protocol = None

    def handshake(self, protocol, hello):
        self.protocol = protocol
        if hello is not None:
            self.protocol += "-" + (hello.smtpd_version or "none")

    def answer(self, request):
        if request.key == "boom":
            raise RuntimeError("answer() itself raised")
        return Found(f"{request.key}@{self.protocol}.example.org")

    def failure(self, request, exc):
        return Error(f"failure: {type(exc).__name__}")

serve(Minimal())
"""


@pytest.mark.parametrize(("protocol", "seen"), [("native", "native-7.9.0-portable"),
                                                ("imsg", "imsg-none"), ("2020", "2020")])
def test_the_runtime_serves_what_is_shaped_like_served(
        start: Started, make_backend: Callable[..., Path], protocol: str, seen: str) -> None:
    driver = start(make_backend(SERVED), protocol=protocol, smtpd_version="7.9.0-portable")
    if protocol == "native":
        assert driver.services == (Service.ALIAS,)
    assert driver.lookup(Service.ALIAS, "root") == Found(f"root@{seen}.example.org")
    reply = driver.lookup(Service.ALIAS, "boom")  # only native replies carry a reason
    assert isinstance(reply, Error)
    if protocol == "native":
        assert reply == Error("failure: RuntimeError")
    assert driver.close() == 0
