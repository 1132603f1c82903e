"""Consul fully stopped: stale answers until max_staleness, then 4xx, never 5xx;
restarted: fresh answers again. smtpd is the same process throughout."""

from __future__ import annotations

import time

from harness.consul import Agent
from harness.smtpd import Outcome, Root, send, wait_for

from .conftest import accepted_after_tempfails, start_seed_smtpd, synced, write_conf

MAX_SENDS = 120  # bounded: ~30 s of attempts at most


def test_outage_stale_then_tempfail_then_fresh(any_root: Root, workdir, smtpd, sink,
                                               consul: Agent) -> None:
    host, inside = workdir(any_root)
    consul.put("aliases/alias/root", "gilles@poolp.org")
    config = write_conf(host, inside, "table-consul.conf",
                        f"store = consul\naddress = {consul.address}\nwait = 1s\n"
                        "timeout = 1s\nmax_staleness = 5s\nretry_min = 200ms\n"
                        "retry_max = 1s\n")
    server, port = start_seed_smtpd(smtpd, any_root, config, sink.port)
    pid = server.pid
    accepted_after_tempfails(port, "root@seed.test")

    consul.stop()  # SIGTERM by PID: Consul is gone
    outcomes: list[Outcome] = []
    for _ in range(MAX_SENDS):
        outcomes.append(send(port, "a@client.test", "root@seed.test"))
        if len(outcomes) >= 3 and all(o.code // 100 == 4 for o in outcomes[-3:]):
            break
        time.sleep(0.25)
    codes = [(o.stage, o.code) for o in outcomes]
    assert not any(500 <= o.code < 600 for o in outcomes), codes       # never a bounce
    assert outcomes[0].accepted, codes                                 # the last good copy
    first_error = next(i for i, o in enumerate(outcomes) if not o.accepted)
    assert all(o.accepted for o in outcomes[:first_error]), codes
    assert all(o.stage == "rcpt" and 400 <= o.code < 500
               for o in outcomes[first_error:]), codes                 # then 4xx, and stays so
    assert server.running() and server.pid == pid
    log = server.log()
    assert "past max_staleness" in log and "sync of 'aliases/' failed" in log

    mark = len(server.log())
    consul.start()  # a new dev agent: empty, its index starts over
    consul.put("aliases/alias/root", "henry@poolp.org")
    assert wait_for(lambda: "recovered after" in server.log()[mark:], 30), server.log()
    assert wait_for(synced(server, "aliases", consul.index("aliases/"), mark), 20), \
        server.log()
    assert send(port, "a@client.test", "root@seed.test").accepted
    stale = first_error + 1  # the first mail plus those answered from the stale copy
    assert wait_for(lambda: sink.recipients().count("gilles@poolp.org") == stale
                    and sink.recipients().count("henry@poolp.org") == 1, 60), server.log()
    assert server.running() and server.pid == pid
