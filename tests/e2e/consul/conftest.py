"""Fixtures for table-consul on real smtpd with real Consul (Debian bullseye's 1.8.7).

The consul binary comes from ``make consul`` (build/consul); missing, the tests fail.
table-consul is installed as PATH_LIBEXEC/table-consul, the name smtpd.conf's
``consul:`` backend needs, and removed afterwards.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.consul import Agent, Cluster, cluster, consul_binary, dev_agent
from harness.smtpd import Outcome, Root, Smtpd, free_port, send

from opensmtpd.install import launcher_source

ACL_TOKEN = "3c0ffee0-dead-4bee-8f00-000000e2e001"  # the harness's management token


@pytest.fixture(scope="session")
def consul_bin() -> Path:
    try:
        binary = consul_binary()
    except FileNotFoundError as exc:
        pytest.fail(f"e2e prerequisite missing: {exc}", pytrace=False)
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True,
                             timeout=30).stdout
    assert "Consul v1.8.7" in version, version
    return binary


@pytest.fixture
def consul(consul_bin: Path, tmp_path: Path) -> Iterator[Agent]:
    agent = dev_agent(tmp_path / "consul")
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def consul_acl(consul_bin: Path, tmp_path: Path) -> Iterator[Agent]:
    agent = dev_agent(tmp_path / "consul-acl", acl_token=ACL_TOKEN)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def consul_cluster(consul_bin: Path, tmp_path: Path) -> Iterator[Cluster]:
    servers = cluster(tmp_path / "cluster")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


# table-consul as smtpd.conf's ``consul:`` backend needs it: PATH_LIBEXEC/table-consul,
# run by the root's /usr/bin/python3 (httpx from Debian's python3-httpx), the library on
# PYTHONPATH (smtpd passes its environment). The harness installs it under the root's
# smtpd lock and removes it when smtpd stops: ``smtpd(root, conf, backends=BACKENDS)``.
BACKENDS = {"consul": launcher_source("consul")}


SEED_CONF = """
table aliases consul:{config}
listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:{sink}
action "fwd" forward-only alias <aliases>
match from any for domain "poolp.org" action "out"
match from any for domain "seed.test" action "fwd"
"""


def start_seed_smtpd(smtpd: Callable[..., Smtpd], root: Root, config: str,
                     sink_port: int) -> tuple[Smtpd, int]:
    """The seed's scenario: <aliases> served by table-consul, aliases of seed.test
    forwarded to poolp.org addresses, relayed to the sink. Returns (smtpd, its port)."""
    port = free_port()
    server = smtpd(root, SEED_CONF.format(config=config, port=port, sink=sink_port),
                   backends=BACKENDS)
    server.start(ready_tables=("aliases",), port=port)
    return server, port


def write_conf(host: Path, inside: str, name: str, text: str) -> str:
    """A config file readable by smtpd's table user; returns its path inside the root."""
    path = host / name
    path.write_text(text)
    path.chmod(0o644)
    return f"{inside}/{name}"


def synced(server: Smtpd, table: str, index: int, after: int = 0) -> Callable[[], bool]:
    """True once the table's log shows a sync at ``index`` or later, past offset ``after``
    of the log (take ``len(server.log())`` before the change: a restarted Consul reuses
    indexes)."""
    def check() -> bool:
        for line in server.log()[after:].splitlines():
            if (f"table {table}[" in line and "synced '" in line and " at index " in line
                    and int(line.rsplit(" at index ", 1)[1].split()[0]) >= index):
                return True
        return False
    return check


def accepted_after_tempfails(port: int, rcpt: str, timeout: float = 30.0) -> list[Outcome]:
    """Send like a real sender retrying on 4xx until accepted (bounded); never a 5xx.

    The first request of a table waits up to startup_wait for its first sync: on a
    loaded machine it may still be answered 4xx, which is what the sender retries.
    """
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = send(port, "a@client.test", rcpt)
        outcomes.append(outcome)
        if outcome.accepted:
            return outcomes
        assert 400 <= outcome.code < 500, outcomes
        time.sleep(0.5)
    raise AssertionError(f"not accepted within {timeout:g}s: {outcomes}")


def group_id(root: Root, name: str) -> int:
    for line in root.host("/etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise KeyError(name)


def table_pids(server: Smtpd) -> list[int]:
    from harness.smtpd import descendants

    return [server.pid, *descendants(server.pid)]
