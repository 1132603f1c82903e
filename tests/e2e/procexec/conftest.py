"""A relay sink that insists on STARTTLS and AUTH: the credentials smtpd 6.8 looks up in a
table (relay `auth <t>`) end up in front of it. Inbound AUTH cannot be tested on Debian
12's 6.8 (no inbound TLS), but smtpd's TLS client side works."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from harness.smtpd import free_port


class AuthSink:
    def __init__(self, cert: Path, key: Path) -> None:
        self.logins: list[tuple[bytes, bytes]] = []
        self.messages: list[tuple[str, list[str], bool]] = []
        self.accounts = {b"bob": b"s3cret"}
        self.port = free_port()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                     tls_context=context, require_starttls=True,
                                     authenticator=self.authenticate, auth_require_tls=True)

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                     mechanism: str, data: object) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False)
        self.logins.append((data.login, data.password))
        return AuthResult(success=self.accounts.get(data.login) == data.password)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos),
                              bool(session.authenticated)))
        return "250 OK"


@pytest.fixture
def auth_sink(tmp_path: Path) -> Iterator[AuthSink]:
    cert, key = tmp_path / "sink.crt", tmp_path / "sink.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=sink.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    sink = AuthSink(cert, key)
    sink.controller.start()
    try:
        yield sink
    finally:
        sink.controller.stop()
