"""A filter written once runs on every smtpd generation, including where a phase it has a
handler for would kill smtpd: smtpd 7.9 exits on ``register|filter|smtp-in|wiz``."""

from __future__ import annotations

from harness.smtpd import Root, free_port, send, wait_for

WIZ_FILTER = """\
from opensmtpd.filter import Filter, reject

f = Filter()


@f.on_phase("wiz")
def wiz(session, query):
    return None


@f.on_phase("mail-from")
def mail_from(session, query):
    if query.param.startswith("spam@"):
        return reject("550 5.7.1 No spam here")


f.run()
"""


def test_wiz_handler_never_stops_smtpd(any_root: Root, workdir, smtpd, sink) -> None:  # type: ignore[no-untyped-def]
    host, inside = workdir(any_root)
    (host / "wiz_filter.py").write_text(WIZ_FILTER)
    (host / "wiz_filter.py").chmod(0o644)
    port = free_port()
    conf = f"""
filter wizard proc-exec "/usr/bin/python3 {inside}/wiz_filter.py"
listen on 127.0.0.1 port {port} filter wizard
action "out" relay host smtp://127.0.0.1:{sink.port}
match from any for domain "example.net" action "out"
"""
    server = smtpd(any_root, conf)
    server.start(port=port)  # 7.9 would exit here on a registered wiz phase
    spam = send(port, "spam@client.test", "bob@example.net")
    assert (spam.stage, spam.code) == ("mail", 550), spam  # the other phases still work
    assert send(port, "alice@client.test", "bob@example.net").accepted
    assert wait_for(lambda: sink.recipients() == ["bob@example.net"]), server.log()
    assert server.running(), server.log()
    left_out = "has no wiz phase (registering it would stop smtpd)" in server.log()
    assert left_out is (any_root.name == "7.9"), server.log()
