"""Issue 14's wrong hint, on real smtpd 6.8: the embedded store's directory made
unreadable (``chmod 000``) while smtpd runs. The table's log names the permission and
the user, never "create it with 'table-consul kv put'" (the store exists); mail is
accepted from the copy in memory or tempfailed, never refused; once the directory is
readable again the sync recovers."""

from __future__ import annotations

from harness.smtpd import Root, send, wait_for

from opensmtpd.consul.store import EmbeddedStore

from .conftest import accepted_after_tempfails, start_seed_smtpd, write_conf


def test_unreadable_store_is_named_as_such(host_root: Root, workdir, smtpd, sink) -> None:
    host, inside = workdir(host_root)
    directory = host / "table-consul"
    directory.mkdir(mode=0o755)
    EmbeddedStore(str(directory / "kv.sqlite3")).put("aliases/alias/root",
                                                     b"gilles@poolp.org")
    config = write_conf(host, inside, "table-consul.conf",
                        f"database = {inside}/table-consul/kv.sqlite3\n")
    server, port = start_seed_smtpd(smtpd, host_root, config, sink.port)
    accepted_after_tempfails(port, "root@seed.test")

    directory.chmod(0o000)
    try:
        assert wait_for(lambda: "sync of 'aliases/' failed" in server.log(), 20), server.log()
        for _ in range(3):
            outcome = send(port, "a@client.test", "root@seed.test")
            assert outcome.accepted or 400 <= outcome.code < 500, f"{outcome}\n{server.log()}"
    finally:
        directory.chmod(0o755)
    assert wait_for(lambda: "sync of 'aliases/' recovered" in server.log(), 30), server.log()
    log = server.log()
    failed = [line for line in log.splitlines() if "sync of 'aliases/' failed" in line]
    assert f"{inside}/table-consul/kv.sqlite3: permission denied to user opensmtpd" \
        in failed[0], failed
    assert "table-consul kv put" not in log and "Traceback" not in log
    assert send(port, "a@client.test", "root@seed.test").accepted
    assert server.running()
