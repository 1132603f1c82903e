"""The seed's article on Debian 12's real smtpd 6.8: a table built on go-opensmtpd or on
py-opensmtpd (tests/children/go_table_2020.py, py_table_2020.py: the libraries' exact
behaviour, exits included) behind table-procexec, serving the article's aliases and
mailaddr checks. The bridge's default settings: the peer dies on the 0.1 handshake, is
restarted in the 2020 dialect and gets the named form it parses."""

from __future__ import annotations

import re

import pytest
from harness.smtpd import Root, free_port, send, wait_for

from .bridged import bridge_backend, install_child, table_line

PEERS = ["go_table_2020.py", "py_table_2020.py"]


def _start(host_root: Root, workdir, smtpd, sink, peer: str, **options: object):
    host, inside = workdir(host_root)
    install_child(host, peer)
    (host / "seed").write_text("root gilles@poolp.org\ngilles@poolp.org\n")
    backends = bridge_backend(host_root, host, **options)
    port = free_port()
    conf = table_line("seed", f"{inside}/{peer} {inside}/seed") + f"""
listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:{sink.port}
action "fwd" forward-only alias <seed>
match from any for rcpt-to <seed> action "out"
match from any for domain "seed.test" action "fwd"
"""
    server = smtpd(host_root, conf, backends)
    server.start(ready_tables=("seed",), port=port)
    return server, port


@pytest.mark.parametrize("peer", PEERS)
def test_article_table_behind_the_bridge(peer: str, host_root: Root, workdir, smtpd,
                                         sink) -> None:
    server, port = _start(host_root, workdir, smtpd, sink, peer)
    pid = server.pid
    assert send(port, "a@client.test", "gilles@poolp.org").accepted  # check mailaddr: found
    assert send(port, "a@client.test", "root@seed.test").accepted  # lookup alias root
    assert wait_for(lambda: sink.recipients() == ["gilles@poolp.org"] * 2,
                    timeout=30), server.log()
    # what the peer's data does not hold is refused for good (not-found is 0, not -1)
    stranger = send(port, "a@client.test", "eric@poolp.org")  # check: not-found, no rule
    assert stranger.stage == "rcpt" and 500 <= stranger.code < 600, stranger
    ghost = send(port, "a@client.test", "ghost@seed.test")  # lookup alias: not-found
    assert ghost.stage == "rcpt" and 500 <= ghost.code < 600, ghost
    log = server.log()
    assert "missing atoms: config|smtpd-version|7.6.0-procexec" in log  # the peer's own exit
    assert "the child answers in the 2020 dialect: keeping it" in log
    # after detection, one 2020 child served everything: it never exited
    assert len(re.findall(r"table seed\[\d+\]: child pid \d+ exited", log)) == 1, log
    assert server.running() and server.pid == pid


def test_unnamed_form_only_tempfails(host_root: Root, workdir, smtpd, sink) -> None:
    """The form sent before (--form-2020 unnamed): the Go peer reads the id as the op and
    exits on every line. Each mail gets a 4xx, none bounces, smtpd stays up."""
    server, port = _start(host_root, workdir, smtpd, sink, "go_table_2020.py",
                          protocol="2020", form_2020="unnamed", deadline=2)
    pid = server.pid
    for _ in range(2):
        outcome = send(port, "a@client.test", "gilles@poolp.org")
        assert outcome.stage == "rcpt" and 400 <= outcome.code < 500, (outcome, server.log())
    assert re.search(r"unsupported operation: [0-9a-f]{16}", server.log()), server.log()
    assert sink.messages == []
    assert server.running() and server.pid == pid
