"""Table metrics end to end (docs/monitoring.md), on every smtpd generation: a Python
table and table-consul write their series to one directory (OPENSMTPD_METRICS_DIR in
smtpd's environment), filter-prometheus serves them (-table-metrics), a real Prometheus
scrapes with the shipped alert rules. After a known sequence of SMTP sessions the table
counters equal what smtpd asked the tables (its own -T lookup trace); stopping Consul turns
the staleness gauge, then the alerts, on."""

from __future__ import annotations

import os
import re
from collections import Counter

from harness.consul import Agent
from harness.smtpd import Root, free_port, send, wait_for

from ..table.backends import MAPPING
from .conftest import BACKENDS, accepted_after_tempfails, group_id, write_conf

_TRACE = re.compile(r'lookup: (match|lookup) ".*" as (\w+) in table \w+:(\w+) -> (.*)$')


def _user_id(root: Root, name: str) -> int:
    for line in root.host("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise KeyError(name)


def _asked(log: str) -> Counter[tuple[str, str, str, str]]:
    """What smtpd asked each table and what it got, from its lookup trace."""
    asked: Counter[tuple[str, str, str, str]] = Counter()
    for line in log.splitlines():
        match = _TRACE.search(line)
        if match:
            kind, service, table, answer = match.groups()
            result = ("error" if answer.startswith("error") else
                      "not-found" if answer in ("none", "false") else "found")
            asked[(table, "check" if kind == "match" else "lookup", service.lower(),
                   result)] += 1
    return asked


def test_table_counters_and_staleness_reach_prometheus(any_root: Root, workdir, smtpd,  # type: ignore[no-untyped-def]
                                                       consul: Agent, prometheus) -> None:
    host, inside = workdir(any_root)
    metrics = host / "metrics"
    metrics.mkdir()
    os.chown(metrics, _user_id(any_root, "opensmtpd"), group_id(any_root, "opensmtpd"))
    (host / "maildir").mkdir()
    os.chown(host / "maildir", 65534, 65534)
    (host / "users").write_text(f"vuser 65534:65534:{inside}/home\n")
    consul.put("aliases/alias/root", "vuser")
    config = write_conf(host, inside, "table-consul.conf",
                        f"store = consul\naddress = {consul.address}\nwait = 1s\n"
                        "timeout = 1s\nmax_staleness = 4s\nretry_min = 200ms\n"
                        "retry_max = 500ms\n")
    port, exporter = free_port(), free_port()
    command = (f"/usr/bin/python3 -m opensmtpd.prometheus -exporter 127.0.0.1:{exporter} "
               f"-table-metrics {inside}/metrics")
    conf = f"""
table aliases consul:{config}
table users pyos-map:{inside}/users
filter "prometheus" proc-exec "{command}"
listen on 127.0.0.1 port {port} filter "prometheus"
action "local" maildir "{inside}/maildir" alias <aliases> userbase <users>
match from any for domain "local.test" action "local"
"""
    server = smtpd(any_root, conf, {**BACKENDS, "pyos-map": MAPPING},
                   env={"OPENSMTPD_METRICS_DIR": f"{inside}/metrics"})
    server.start(ready_tables=("aliases", "users"), port=port)
    prom = prometheus({any_root.name: exporter})

    accepted_after_tempfails(port, "root@local.test")  # alias -> vuser -> its userinfo
    assert send(port, "a@client.test", "vuser@local.test").accepted
    ghost = send(port, "a@client.test", "ghost@local.test")
    assert (ghost.stage, ghost.code) == ("rcpt", 550), ghost

    asked = _asked(server.log())
    assert {key[0] for key in asked} == {"aliases", "users"}
    assert {key[3] for key in asked} >= {"found", "not-found"}

    def scraped() -> Counter[tuple[str, str, str, str]]:
        return Counter({(s["metric"]["table"], s["metric"]["op"], s["metric"]["service"],
                         s["metric"]["result"]): int(float(s["value"][1]))
                        for s in prom.query("sum by (table, op, service, result) "
                                            "(opensmtpd_table_requests_total)")})

    assert wait_for(lambda: scraped() == asked, 30), (scraped(), asked)
    assert prom.wait_value('opensmtpd_table_consul_stale{table="aliases"}', 0) == 0
    assert prom.wait_value('opensmtpd_table_consul_entries{table="aliases"}', 1) == 1

    consul.stop()  # by PID: the replica's syncs fail from now on
    assert prom.wait_value('opensmtpd_table_consul_stale{table="aliases"}', 2) == 2, \
        server.log()
    assert wait_for(lambda: {a["labels"]["alertname"]: a["state"]
                             for a in prom.api("alerts")["alerts"]
                             if a["labels"].get("table") == "aliases"}.get(
                                 "SmtpdTableReplicaExpired") == "firing", 30), \
        prom.api("alerts")
    assert prom.value('opensmtpd_table_consul_sync_errors_total{table="aliases"}') >= 1  # type: ignore[operator]
    assert server.running()
