"""The seed's scenario on real smtpd 6.8 and 7.6: a PUT changes root's alias, no restart.

For both stores: Consul (a real 1.8.7 dev agent) and the embedded SQLite store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.consul import Agent
from harness.smtpd import Root, send, wait_for

from opensmtpd.consul.store import EmbeddedStore

from .conftest import accepted_after_tempfails, start_seed_smtpd, synced, write_conf


class Store:
    """Consul or the embedded store, behind the same two calls."""

    def __init__(self, consul: Agent | None, database: Path | None) -> None:
        self.consul, self.embedded = consul, EmbeddedStore(str(database)) if database else None

    def put(self, key: str, value: str) -> int:
        """Set ``key``; returns the index the table's log will show."""
        if self.consul is not None:
            self.consul.put(key, value)
            return self.consul.index("aliases/")
        assert self.embedded is not None
        self.embedded.put(key, value.encode())
        return self.embedded.list().index


@pytest.mark.parametrize("store", ["consul", "embedded"])
def test_put_changes_the_alias_without_restarting_smtpd(
        any_root: Root, workdir, smtpd, sink, request: pytest.FixtureRequest,
        store: str) -> None:
    host, inside = workdir(any_root)
    if store == "consul":
        agent: Agent = request.getfixturevalue("consul")
        kv = Store(agent, None)
        settings = f"store = consul\naddress = {agent.address}\nwait = 5s\n"
    else:
        kv = Store(None, host / "kv.sqlite3")
        settings = f"database = {inside}/kv.sqlite3\n"
    kv.put("aliases/alias/postmaster", "ops@poolp.org")
    config = write_conf(host, inside, "table-consul.conf", settings)
    server, port = start_seed_smtpd(smtpd, any_root, config, sink.port)
    pid = server.pid

    accepted_after_tempfails(port, "postmaster@seed.test")
    ghost = send(port, "a@client.test", "ghost@seed.test")  # synced: a definite no
    assert ghost.stage == "rcpt" and ghost.code >= 500, f"{ghost}\n{server.log()}"

    mark = len(server.log())
    index = kv.put("aliases/alias/root", "gilles@poolp.org")
    assert wait_for(synced(server, "aliases", index, mark), 20), server.log()
    outcome = send(port, "a@client.test", "root@seed.test")
    assert outcome.accepted, f"{outcome}\n{server.log()}"
    assert wait_for(lambda: "gilles@poolp.org" in sink.recipients(), 30), server.log()

    mark = len(server.log())
    index = kv.put("aliases/alias/root", "henry@poolp.org")
    assert wait_for(synced(server, "aliases", index, mark), 20), server.log()
    assert send(port, "a@client.test", "root@seed.test").accepted
    assert wait_for(lambda: "henry@poolp.org" in sink.recipients(), 30), server.log()
    assert sorted(sink.recipients()) == ["gilles@poolp.org", "henry@poolp.org",
                                         "ops@poolp.org"]

    result = server.smtpctl("update", "table", "aliases")
    assert result.returncode == 0, result.stdout + result.stderr
    assert wait_for(lambda: "forced re-sync of 'aliases/'" in server.log(), 10), server.log()
    assert server.running() and server.pid == pid


def test_kv_command_feeds_a_running_smtpd(host_root: Root, workdir, smtpd, sink) -> None:
    """The README demo's path: `table-consul kv put` on the default-format store."""
    import subprocess
    import sys

    host, inside = workdir(host_root)
    config = write_conf(host, inside, "table-consul.conf", f"database = {inside}/kv.sqlite3\n")
    command = [str(Path(sys.executable).parent / "table-consul"), "kv", "-c", config]
    subprocess.run([*command, "put", "aliases/alias/postmaster", "ops@poolp.org"], check=True)
    server, port = start_seed_smtpd(smtpd, host_root, config, sink.port)
    accepted_after_tempfails(port, "postmaster@seed.test")
    subprocess.run([*command, "put", "aliases/alias/root", "gilles@poolp.org"], check=True)
    index = EmbeddedStore(str(host / "kv.sqlite3")).list().index
    assert wait_for(synced(server, "aliases", index), 20), server.log()
    assert send(port, "a@client.test", "root@seed.test").accepted
    assert wait_for(lambda: sorted(sink.recipients()) == ["gilles@poolp.org",
                                                          "ops@poolp.org"], 30), server.log()
