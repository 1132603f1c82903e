"""Every failure of the Consul client names its real cause (issue 14), against real
Consul 1.8.7 agents: an ACL denial (403, ACLs on in dev mode, a token Consul does not
know), an HTTP error status (500 from a datacenter the agent has no path to), connection
refused (the agent stopped), and a timeout (the agent frozen with SIGSTOP)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from harness.consul import Agent
from harness.smtpd import wait_for

from opensmtpd.consul.client import ConsulClient, ConsulError
from opensmtpd.consul.config import load

BAD_TOKEN = "00000000-0000-4000-8000-000000000bad"


def client(agent: Agent, tmp_path: Path, extra: str = "", **env: str) -> ConsulClient:
    conf = tmp_path / "client.conf"
    conf.write_text(f"store = consul\naddress = {agent.address}\ntimeout = 1s\n{extra}")
    return ConsulClient(load(conf, env=env))


def failure(c: ConsulClient, **kwargs: float) -> str:
    with pytest.raises(ConsulError) as caught:
        c.list("mail/", **kwargs)  # type: ignore[arg-type]
    c.close()
    return str(caught.value)


def stopped(agent: Agent) -> bool:
    assert agent.process is not None
    stat = Path(f"/proc/{agent.process.pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "T"


def test_acl_denied_names_the_token(consul_acl: Agent, tmp_path: Path) -> None:
    consul_acl.put("mail/alias/root", "gilles")
    text = failure(client(consul_acl, tmp_path, CONSUL_HTTP_TOKEN=BAD_TOKEN))
    assert text == ("GET /v1/kv/mail/: permission denied by Consul ACLs (ACL not found); "
                    "check the token (token_file, CONSUL_HTTP_TOKEN)")
    assert BAD_TOKEN not in text


def test_http_status_is_named_with_consuls_reason(consul: Agent, tmp_path: Path) -> None:
    text = failure(client(consul, tmp_path, "datacenter = nowhere\n"))
    assert text == ("GET /v1/kv/mail/: Consul answered HTTP 500 Internal Server Error: "
                    "No path to datacenter")


def test_connection_refused_names_the_address(consul: Agent, tmp_path: Path) -> None:
    c = client(consul, tmp_path)
    assert c.list("mail/").items == ()  # the agent answers: a 404, an empty prefix
    consul.stop()
    text = failure(c)
    assert text == (f"GET /v1/kv/mail/: connection refused by {c.config.address} "
                    "(ConnectError): is the Consul agent running and listening there?")


def test_a_frozen_agent_is_a_timeout(consul: Agent, tmp_path: Path) -> None:
    c = client(consul, tmp_path)
    assert consul.process is not None
    consul.process.send_signal(signal.SIGSTOP)
    try:
        assert wait_for(lambda: stopped(consul), 10), "the agent did not stop"
        text = failure(c)
    finally:
        consul.process.send_signal(signal.SIGCONT)
    assert text == (f"GET /v1/kv/mail/: timed out: no answer from Consul at "
                    f"{c.config.address} within 1s (ReadTimeout)")
