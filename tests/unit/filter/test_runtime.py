"""The runtime as smtpd runs it: a child process with one socket on fd 0 and fd 1."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opensmtpd.filter import Filter, Query, _runtime
from opensmtpd.filter.wire import (
    Config,
    DataLine,
    DataLines,
    Event,
    FilterSide,
    Registration,
    Result,
    SmtpdSide,
)

from . import transcripts

PYTHON = sys.executable
HANDSHAKE = ("config|smtpd-version|7.6.0-portable\nconfig|protocol|0.7\n"
             "config|subsystem|smtp-in\nconfig|admd|vm\nconfig|ready\n")


class Child:
    """A filter started like smtpd does: fd 0 and 1 are one end of a socketpair."""

    def __init__(self, script: Path, stderr: Path) -> None:
        self.sock, theirs = socket.socketpair()
        with open(stderr, "wb") as err:
            self.proc = subprocess.Popen([str(script)], stdin=theirs, stdout=theirs, stderr=err)
        theirs.close()
        self.stderr = stderr
        self.buffer = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8", "surrogateescape"))

    def lines(self, count: int, timeout: float = 10.0) -> list[str]:
        """The next ``count`` lines (fewer if none come within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.buffer.count(b"\n") < count and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            self.buffer += data
        got = []
        while len(got) < count and b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            got.append(line.decode("utf-8", "surrogateescape"))
        return got

    def close(self) -> int:
        self.sock.shutdown(socket.SHUT_WR)
        rest = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                break
            rest += data
        self.buffer += rest
        code = self.proc.wait(10)
        self.sock.close()
        return code

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Callable[[str], Child]]:
    started: list[Child] = []

    def start(body: str) -> Child:
        script = tmp_path / f"filter{len(started)}.py"
        script.write_text(f"#!{PYTHON}\n" + textwrap.dedent(body).lstrip("\n"))
        script.chmod(0o755)
        started.append(Child(script, tmp_path / f"stderr{len(started)}.log"))
        return started[-1]

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(5)
        c.sock.close()


ECHO = """
    import sys
    from opensmtpd.filter import Filter, reject

    f = Filter()

    @f.on_phase("connect", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data",
             "quit", "commit")
    def answer(session, query):
        print("stray output", query.phase)  # must not reach smtpd
        if query.phase == "mail-from" and query.param.startswith("boom"):
            raise RuntimeError("handler bug")
        if query.phase == "rcpt-to" and query.param.startswith("bad"):
            return reject("550 5.1.1 no")

    @f.on_report("*")
    def seen(session, event):
        if event.name == "tx-mail":
            1 / 0

    @f.on_data_line
    def line(session, text):
        return None

    f.run()
"""


def test_real_7_6_run_answered_exactly(child: Callable[[str], Child]) -> None:
    run = transcripts.runs("7.6")[0]
    c = child(ECHO)
    c.send("\n".join(run) + "\n")
    queries = [line for line in run if line.startswith("filter|")]
    registration = c.lines(12)
    assert registration[0] == "register|report|smtp-in|*"
    assert registration[-1] == "register|ready"
    answers = c.lines(len(queries))
    assert c.close() == 0
    assert c.buffer == b""  # nothing more than one answer per query
    assert len(answers) == len(queries)
    for query, got in zip(queries, answers, strict=True):
        fields = query.split("|", 7)
        kind = "filter-dataline" if fields[4] == "data-line" else "filter-result"
        assert got.startswith(f"{kind}|{fields[5]}|{fields[6]}|"), (query, got)
        if kind == "filter-dataline":
            assert got.split("|", 3)[3] == fields[7]
        elif fields[4] != "rcpt-to" or not fields[7].startswith("bad"):
            assert got.endswith("|proceed")
    log = c.log()
    assert "stray output" in log  # print() went to stderr
    assert "ZeroDivisionError" in log


def test_every_line_of_a_filter_process_taken_by_smtpds_end(
        child: Callable[[str], Child]) -> None:
    """The same run, spoken by SmtpdSide one event at a time: what smtpd 7.6 would read
    from this process is one registration and one answer per query, never a line it
    exits on (next_event raises where smtpd would)."""
    smtpd, parser = SmtpdSide(), FilterSide()
    run = transcripts.runs("7.6")[0]
    parser.receive_data(("\n".join(run) + "\n").encode())
    c = child(ECHO)
    answers = []
    for event in parser.next_events():
        c.sock.sendall(smtpd.send(event))  # type: ignore[arg-type]
        expected = 12 if isinstance(event, Config) else int(isinstance(event, (Query, DataLine)))
        for line in c.lines(expected):
            smtpd.receive_data(line.encode("utf-8", "surrogateescape") + b"\n")
            answers += iter(smtpd.next_event, None)
    assert c.close() == 0 and c.buffer == b""
    assert isinstance(answers[0], Registration)
    results = [a for a in answers if isinstance(a, Result)]
    lines = [a for a in answers if isinstance(a, DataLines)]
    queries = [line.split("|")[4] for line in run if line.startswith("filter|")]
    assert len(results) == sum(phase != "data-line" for phase in queries)
    assert len(lines) == queries.count("data-line") and len(answers) == 1 + len(queries)
    assert [r.decision.action for r in results if r.decision.action != "proceed"] == [
        "reject"]  # the rcpt-to of "bad…" in ECHO


def test_handler_failure_then_policy_and_still_alive(child: Callable[[str], Child]) -> None:
    c = child(ECHO)
    c.send(HANDSHAKE)
    assert c.lines(12)[-1] == "register|ready"
    c.send("filter|0.7|1.000001|smtp-in|mail-from|aaaaaaaaaaaaaaaa|bbbbbbbbbbbbbbbb|boom@x\n")
    assert c.lines(1) == ["filter-result|aaaaaaaaaaaaaaaa|bbbbbbbbbbbbbbbb|proceed"]
    c.send("filter|0.7|1.000001|smtp-in|rcpt-to|aaaaaaaaaaaaaaaa|bbbbbbbbbbbbbbbb|bad@x\n")
    assert c.lines(1) == ["filter-result|aaaaaaaaaaaaaaaa|bbbbbbbbbbbbbbbb|reject|550 5.1.1 no"]
    c.send("garbage\nreport|0.7|1.0|smtp-in|tx-mail|aaaaaaaaaaaaaaaa|x|ok|a@b\n")
    time.sleep(0.3)
    assert c.proc.poll() is None  # only EOF ends a filter
    assert c.close() == 0
    assert "RuntimeError" in c.log() and "unparsed line" in c.log()


def test_invalid_utf8_and_long_lines(child: Callable[[str], Child]) -> None:
    c = child(ECHO)
    c.send(HANDSHAKE)
    c.lines(12)
    long = "é" * 40000  # 80 KB of UTF-8 on a 0.7 line: cut under 64 KiB
    raw = (b"filter|0.7|1.0|smtp-in|data-line|aaaaaaaaaaaaaaaa|bbbbbbbbbbbbbbbb|\xff\xfe ok\n"
           + f"filter|0.7|1.0|smtp-in|data-line|aaaaaaaaaaaaaaaa|bbbbbbbbbbbbbbbb|{long}\n"
           .encode())
    c.sock.sendall(raw)
    first, *pieces = c.lines(3)
    assert first.encode("utf-8", "surrogateescape").endswith(b"|\xff\xfe ok")
    assert all(len(p.encode()) <= 65535 for p in pieces)
    assert "".join(p.split("|", 3)[3] for p in pieces) == long
    assert c.close() == 0


ASYNC = """
    import asyncio
    from opensmtpd.filter import Filter, reject

    f = Filter(deadline=2.0, on_error="tempfail")

    @f.on_phase("helo")
    async def helo(session, query):
        await asyncio.sleep({"slow": 1.0, "stuck": 30}.get(query.param, 0))
        return reject("550 5.7.1 " + query.param)

    f.run()
"""


def test_async_sessions_run_concurrently(child: Callable[[str], Child]) -> None:
    c = child(ASYNC)
    c.send(HANDSHAKE)
    c.lines(3)
    c.send("filter|0.7|1.0|smtp-in|helo|aaaaaaaaaaaaaaaa|0000000000000001|slow\n"
           "filter|0.7|1.0|smtp-in|helo|bbbbbbbbbbbbbbbb|0000000000000001|fast\n")
    assert c.lines(2) == [
        "filter-result|bbbbbbbbbbbbbbbb|0000000000000001|reject|550 5.7.1 fast",
        "filter-result|aaaaaaaaaaaaaaaa|0000000000000001|reject|550 5.7.1 slow"]
    started = time.monotonic()
    c.send("filter|0.7|1.0|smtp-in|helo|cccccccccccccccc|0000000000000001|stuck\n")
    assert c.lines(1, timeout=10) == [
        "filter-result|cccccccccccccccc|0000000000000001|reject|451 4.3.0 Temporary failure "
        "in a mail filter, try again later"]
    assert 1.5 < time.monotonic() - started < 8
    assert c.close() == 0


PLAIN_FUNCTIONS = """
    from opensmtpd.filter import Filter, reject

    def connected(session, event):
        session.state["rdns"] = event.rdns

    def mail_from(session, query):
        if session.state.get("rdns") == "<unknown>":
            return reject("550 5.7.1 no rDNS")

    f = Filter()
    f.on_report("link-connect")(connected)  # the seed's callback style, one spelling
    f.on_phase("mail-from")(mail_from)
    f.run()
"""


def test_functions_registered_without_decorators(child: Callable[[str], Child]) -> None:
    c = child(PLAIN_FUNCTIONS)
    c.send(HANDSHAKE)
    assert c.lines(4) == ["register|report|smtp-in|link-connect",
                          "register|report|smtp-in|link-disconnect",
                          "register|filter|smtp-in|mail-from", "register|ready"]
    c.send("report|0.7|1.0|smtp-in|link-connect|aaaaaaaaaaaaaaaa|<unknown>|pass|1.2.3.4:5|"
           "6.7.8.9:25\n"
           "report|0.7|1.0|smtp-in|link-connect|bbbbbbbbbbbbbbbb|ok.test|pass|1.2.3.4:6|"
           "6.7.8.9:25\n"
           "filter|0.7|1.0|smtp-in|mail-from|aaaaaaaaaaaaaaaa|0000000000000001|a@b\n"
           "filter|0.7|1.0|smtp-in|mail-from|bbbbbbbbbbbbbbbb|0000000000000001|a@b\n")
    assert c.lines(2) == [
        "filter-result|aaaaaaaaaaaaaaaa|0000000000000001|reject|550 5.7.1 no rDNS",
        "filter-result|bbbbbbbbbbbbbbbb|0000000000000001|proceed"]
    assert c.close() == 0


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "filter_example.py"


def test_example_filter(child: Callable[[str], Child]) -> None:
    c = child(EXAMPLE.read_text().split("\n", 1)[1])  # the venv's python, same file
    c.send(HANDSHAKE)
    assert c.lines(7) == ["register|report|smtp-in|link-connect",
                          "register|report|smtp-in|link-disconnect",
                          "register|filter|smtp-in|mail-from", "register|filter|smtp-in|rcpt-to",
                          "register|filter|smtp-in|data-line", "register|filter|smtp-in|commit",
                          "register|ready"]
    sid, tok = "aaaaaaaaaaaaaaaa", "0000000000000001"
    c.send(f"report|0.7|1.0|smtp-in|link-connect|{sid}|<unknown>|pass|1.2.3.4:5|6.7.8.9:25\n"
           f"filter|0.7|1.0|smtp-in|mail-from|{sid}|{tok}|a@b.test\n"
           f"filter|0.7|1.0|smtp-in|rcpt-to|{sid}|{tok}|SpamTrap@x.test\n"
           f"filter|0.7|1.0|smtp-in|data-line|{sid}|{tok}|..body\n"
           f"filter|0.7|1.0|smtp-in|data-line|{sid}|{tok}|.\n"
           f"filter|0.7|1.0|smtp-in|commit|{sid}|{tok}|\n")
    assert c.lines(6) == [
        f"filter-result|{sid}|{tok}|reject|451 4.7.1 No reverse DNS: try again later",
        f"filter-result|{sid}|{tok}|reject|550 5.1.1 No such user",
        f"filter-dataline|{sid}|{tok}|X-Filtered-Session: {sid}",
        f"filter-dataline|{sid}|{tok}|..body",
        f"filter-dataline|{sid}|{tok}|.",
        f"filter-result|{sid}|{tok}|proceed"]
    assert c.close() == 0
    assert "connection from 1.2.3.4:5 (<unknown>)" in c.log()


# Found in review: what used to escape the per-event guard and end the filter (and smtpd).
HOSTILE = """
    import asyncio
    import sys
    from opensmtpd.filter import Filter, reject

    f = Filter()

    @f.on_phase("mail-from")
    {prefix}def answer(session, query):
        if query.param.startswith("surrogate"):
            return reject("550 5.7.1 blocked: \\ud83d")  # no encoding can send this
        if query.param.startswith("exit"):
            raise SystemExit(3)
        if query.param.startswith("cancel"):
            raise asyncio.CancelledError()
        return None

    f.run()
"""


@pytest.mark.parametrize("prefix", ["", "async "])
def test_unencodable_exit_and_cancel_still_answered(child: Callable[[str], Child],
                                                    prefix: str) -> None:
    c = child(HOSTILE.replace("{prefix}", prefix))
    c.send(HANDSHAKE)
    registration = c.lines(5, timeout=3)
    assert registration[-1] == "register|ready", registration
    head = "filter|0.7|1.0|smtp-in|mail-from"
    for number, param in enumerate(("surrogate@x", "exit@x", "cancel@x", "fine@x")):
        session = f"{number:016x}"
        c.send(f"{head}|{session}|00000000000000aa|{param}\n")
        answer = c.lines(1)
        assert answer and answer[0].startswith(f"filter-result|{session}|00000000000000aa|"), (
            param, answer, c.log())
    assert c.proc.poll() is None  # still serving smtpd
    assert c.close() == 0


# --- the runtime's sans-IO part: settle and drive ---


def _query(phase: str, session: str = "0123456789abcdef") -> Query:
    return Query("0.7", 1.0, "smtp-in", phase, session, "00000000000000ff", "x")


def test_plain_dispatch_driven_without_a_loop() -> None:
    """An async handler registered once the filter serves without a loop is a failure
    answered per the policy, never a suspended dispatch (the batch would be lost)."""
    f = Filter(on_error="tempfail")
    f.on_phase("helo")(lambda session, query: None)
    target = f._dispatcher
    assert not target.awaits

    async def late(session: object, query: object) -> None: ...

    f.on_phase("mail-from")(late)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _runtime.drive(_runtime.settle(target, [_query("helo"), _query("mail-from")]))
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]  # closed, not leaked
    assert out.decode().splitlines() == [
        "filter-result|0123456789abcdef|00000000000000ff|proceed",
        "filter-result|0123456789abcdef|00000000000000ff|reject|" + f.tempfail_reply]


class fake_CrashingDispatch:
    """A dispatcher whose dispatch itself fails (a bug no real input triggers on demand)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.side = FilterSide()
        self.awaits = False
        self.name: str | None = None
        self.is_async = False

    async def dispatch(self, event: Event) -> bytes:
        raise self.exc

    def answer_anyway(self, event: Event) -> bytes:
        if isinstance(self.exc, MemoryError):
            raise self.exc
        return b"anyway\n"


@pytest.mark.parametrize("exc", [RuntimeError("bug"), SystemExit(3), UnicodeEncodeError(
    "utf-8", "\ud800", 0, 1, "surrogate")])
def test_settle_turns_any_failure_into_the_policy_answer(exc: BaseException) -> None:
    target = fake_CrashingDispatch(exc)
    assert _runtime.drive(_runtime.settle(target, [_query("helo"), _query("helo")])) == \
        b"anyway\nanyway\n"


def test_settle_survives_even_the_policy_answer_failing() -> None:
    target = fake_CrashingDispatch(MemoryError())
    assert _runtime.drive(_runtime.settle(target, [_query("helo")])) == b""


def test_drive_refuses_a_suspending_coroutine() -> None:
    async def suspends() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="suspended"):
        _runtime.drive(suspends())
