"""The benches' SMTP client (bench/_smtp.py) counts only what was really accepted, names
every other outcome, and never hangs: a bench's exit status rests on it."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from harness.smtpd import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _smtp import blast


class Server:
    """A real SMTP server (aiosmtpd) that refuses RCPT TO:<nobody…> and records mail."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str]]] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if address.startswith("nobody"):
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 accepted"


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    running.controller.start()
    try:
        yield running
    finally:
        running.controller.stop()


def test_every_message_accepted_and_delivered(server: Server) -> None:
    result = blast(server.port, 40, 4, lambda n: [f"r{n}@bench.test", f"x{n}@bench.test"])
    assert result.failures == []
    assert (result.messages, result.accepted) == (40, 40)
    assert sorted(server.messages) == sorted(
        (f"s{n}@client.test", [f"r{n}@bench.test", f"x{n}@bench.test"]) for n in range(40))
    assert result.rate == 40 / result.wall > 0
    assert result.cpu > 0


def test_a_refused_recipient_is_a_failure_naming_the_message(server: Server) -> None:
    result = blast(server.port, 10, 3,
                   lambda n: ["nobody@bench.test" if n == 7 else f"r{n}@bench.test"])
    assert result.accepted == 9
    assert len(result.failures) == 1
    assert result.failures[0].startswith("message 7: after 'RCPT TO:<nobody@bench.test>': "
                                         "expected 250, got '550 no such user'")
    assert len(server.messages) == 9


def test_a_silent_server_stalls_the_blast_not_the_bench() -> None:
    with socket.socket() as listener:  # accepts (the kernel does), never says 220
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        result = blast(listener.getsockname()[1], 5, 2, stall=0.5)
    assert result.accepted == 0
    assert result.failures == ["message 0: no reply for 0.5s", "message 1: no reply for 0.5s",
                               "3 messages not sent (stalled)"]


def test_nothing_listening_fails_every_message() -> None:
    result = blast(free_port(), 3, 2, stall=5)
    assert result.accepted == 0
    assert len(result.failures) == 3
    assert all("connect: Connection refused" in f for f in result.failures)
