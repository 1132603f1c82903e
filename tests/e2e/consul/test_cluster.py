"""A 3-server Consul cluster on loopback loses its leader mid-run: lookups keep answering.

The table talks to a follower with stale reads (the default), so it keeps syncing while
the cluster has no leader; after the new election a change is picked up as usual.
"""

from __future__ import annotations

from harness.consul import Cluster
from harness.smtpd import Root, send, wait_for

from .conftest import accepted_after_tempfails, start_seed_smtpd, synced, write_conf


def test_leader_killed_mid_run(any_root: Root, workdir, smtpd, sink,
                               consul_cluster: Cluster) -> None:
    host, inside = workdir(any_root)
    leader = consul_cluster.leader()
    follower = consul_cluster.followers()[0]
    leader.put("aliases/alias/root", "gilles@poolp.org")
    index = leader.index("aliases/")
    config = write_conf(host, inside, "table-consul.conf",
                        f"store = consul\naddress = {follower.address}\nwait = 2s\n"
                        "retry_min = 100ms\nretry_max = 1s\n")
    server, port = start_seed_smtpd(smtpd, any_root, config, sink.port)
    accepted_after_tempfails(port, "root@seed.test")
    assert wait_for(synced(server, "aliases", index), 20), server.log()

    leader.kill()  # SIGKILL: no graceful leave
    during = [send(port, "a@client.test", "root@seed.test") for _ in range(15)]
    assert all(outcome.accepted for outcome in during), f"{during}\n{server.log()}"

    # a new leader is elected among the two survivors; writes work again
    assert wait_for(lambda: _put(follower, "aliases/alias/root", "henry@poolp.org"), 60), \
        follower.log()
    new_leader = consul_cluster.leader()
    assert new_leader is not leader
    # the write's index is past every earlier one (stale reads may lag a little behind it)
    assert wait_for(synced(server, "aliases", index + 1), 20), server.log()
    assert send(port, "a@client.test", "root@seed.test").accepted
    assert wait_for(lambda: sink.recipients().count("gilles@poolp.org") == 16
                    and "henry@poolp.org" in sink.recipients(), 60), server.log()
    assert server.running()


def _put(agent, key: str, value: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        agent.put(key, value)
    except Exception:
        return False
    return True
