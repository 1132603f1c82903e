"""Consul with ACLs on (default deny): no token is an error (4xx), the token file works.

A token without read access sees an ACL-filtered, empty listing (a 404, not a 403):
the table answers error for an empty table rather than not-found, so no mail bounces.
The token never shows in smtpd's log or in any process's argv.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.consul import Agent
from harness.smtpd import Root, free_port, send, wait_for

from .conftest import (
    ACL_TOKEN,
    BACKENDS,
    accepted_after_tempfails,
    group_id,
    table_pids,
    write_conf,
)


def test_acl_token_enforced(any_root: Root, workdir, smtpd, sink,
                            consul_acl: Agent) -> None:
    host, inside = workdir(any_root)
    read_token = consul_acl.create_token('key_prefix "mail/" { policy = "read" }')
    consul_acl.put("mail/alias/root", "gilles@poolp.org")
    token_file = host / "consul-token"
    token_file.write_text(read_token + "\n")
    os.chown(token_file, 0, group_id(any_root, "opensmtpd"))  # root:opensmtpd 0640
    token_file.chmod(0o640)
    bad_file = host / "bad-token"
    bad_file.write_text("00000000-0000-4000-8000-000000000bad\n")
    bad_file.chmod(0o644)
    common = f"store = consul\naddress = {consul_acl.address}\nkey_layout = mail/<service>/<key>\n"
    configs = {
        "notoken": write_conf(host, inside, "notoken.conf", common),
        "withtoken": write_conf(host, inside, "withtoken.conf",
                                common + f"token_file = {inside}/consul-token\n"),
        "badtoken": write_conf(host, inside, "badtoken.conf",
                               common + f"token_file = {inside}/bad-token\n"),
    }
    port = free_port()
    conf = "".join(f"table {name} consul:{path}\n" for name, path in configs.items()) + f"""
listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:{sink.port}
action "fwd-notoken" forward-only alias <notoken>
action "fwd-withtoken" forward-only alias <withtoken>
action "fwd-badtoken" forward-only alias <badtoken>
match from any for domain "poolp.org" action "out"
match from any for domain "notoken.test" action "fwd-notoken"
match from any for domain "withtoken.test" action "fwd-withtoken"
match from any for domain "badtoken.test" action "fwd-badtoken"
"""
    server = smtpd(any_root, conf, backends=BACKENDS)
    server.start(ready_tables=tuple(configs), port=port)

    accepted_after_tempfails(port, "root@withtoken.test")
    for _ in range(3):
        refused = send(port, "a@client.test", "root@notoken.test")
        assert refused.stage == "rcpt" and 400 <= refused.code < 500, f"{refused}\n{server.log()}"
        denied = send(port, "a@client.test", "root@badtoken.test")
        assert denied.stage == "rcpt" and 400 <= denied.code < 500, f"{denied}\n{server.log()}"
    assert wait_for(lambda: sink.recipients() == ["gilles@poolp.org"], 30), server.log()

    log = server.log()
    assert "no entry under 'mail/'" in log                      # notoken: filtered to empty
    assert "permission denied by Consul ACLs" in log            # badtoken: a 403
    for secret in (read_token, ACL_TOKEN, "000000000bad"):
        assert secret not in log
        for pid in table_pids(server):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            assert secret.encode() not in cmdline and secret.encode() not in environ
    assert server.running()
