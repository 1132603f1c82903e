"""The real table-procexec process (runtime.py): children in three dialects and languages,
faults, EOF and signals, its log lines, driven over imsg exactly as smtpd 6.8 drives a
table. (argv: test_cli.py; the child process itself: test_child.py.)"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opensmtpd.table import Error, Found, NotFound, Service, Updated
from opensmtpd.table.driver import Driver
from opensmtpd.table.wire import imsg
from opensmtpd.table.wire.events import Op

from .conftest import BRIDGE, REPO, Bridged, child, fault_child, ours

ALIAS, USERINFO = Service.ALIAS, Service.USERINFO
Start = Callable[..., Bridged]


def until_found(driver: Driver, service: Service, key: str, timeout: float = 15.0) -> int:
    """Ask until the answer is found; how many -1 answers came first (bounded)."""
    failures = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = driver.lookup(service, key)
        if isinstance(reply, Found):
            return failures
        assert isinstance(reply, Error), reply  # never a not-found meanwhile: no bounce
        failures += 1
        time.sleep(0.05)
    raise AssertionError(f"{key} never found")


# --- the three children -------------------------------------------------------------------

@pytest.mark.parametrize(("name", "dialect"), [("native_table.py", "0.1 protocol"),
                                               ("shell_table.sh", "0.1 protocol"),
                                               ("table_2020.py", "2020 dialect")])
def test_children_in_every_dialect_and_language(bridge: Start, tmp_path: Path,
                                                data_file: Path, name: str,
                                                dialect: str) -> None:
    # a 0.1 child is given all the time it needs to register (a loaded test host can be
    # slow to start Python); the 2020 one is detected by its silence, quickly
    patience = 1 if dialect == "2020 dialect" else 10
    bridged = bridge(f"{child(tmp_path, name)} {data_file}", handshake_timeout=patience)
    driver = bridged.driver
    assert driver.lookup(ALIAS, "root") == Found("0:0:/root")
    assert driver.lookup(USERINFO, "vuser") == Found("65534:65534:/var/empty")
    assert driver.check(Service.DOMAIN, "example.org") == Found()
    assert driver.check(Service.DOMAIN, "example.net") == NotFound()  # 0, not -1
    assert driver.lookup(Service.CREDENTIALS, "alice") == Found("alice:$6$salt$hash")
    assert driver.lookup(ALIAS, "nobody") == NotFound()
    assert driver.update() == Updated()
    assert bridged.wait_log(rf"table aliases\[\d+\]: ready: child pid \d+ (speaks|spoken to in)"
                            rf" the {dialect}")


def test_seed_example_in_the_2020_dialect(bridge: Start, tmp_path: Path) -> None:
    """examples/seed_table.py, with dispatch() forced to the 2020 dialect."""
    source = (REPO / "examples" / "seed_table.py").read_text()
    assert "    table.dispatch()\n" in source
    seed = tmp_path / "seed_table.py"
    seed.write_text(f"#!{sys.executable}\n" + source.split("\n", 1)[1].replace(
        "    table.dispatch()\n", '    table.dispatch(protocol="2020")\n'))
    seed.chmod(0o755)
    bridged = bridge(str(seed), table="seed", handshake_timeout=1)
    assert bridged.driver.lookup(ALIAS, "root") == Found("gilles@poolp.org")
    assert bridged.driver.check(Service.MAILADDR, "gilles@poolp.org") == Found()
    assert bridged.driver.check(Service.MAILADDR, "eric@poolp.org") == NotFound()
    assert "the child answers in the 2020 dialect: keeping it" in bridged.log()


def test_a_2020_child_that_exits_on_the_handshake(bridge: Start, tmp_path: Path) -> None:
    """Like the seed's own 2020 libraries, which exit on any line not starting table|."""
    strict = tmp_path / "strict_2020.py"
    strict.write_text(f"#!{sys.executable}\n" + """\
import sys
for line in sys.stdin:
    f = line.rstrip("\\n").split("|")
    if f[0] != "table":
        sys.exit("strict_2020: not a table line")
    print(f"table-result|{f[5]}|found|vuser" if f[4] == "lookup" else
          f"table-result|{f[5]}|not-found", flush=True)
""")
    strict.chmod(0o755)
    bridged = bridge(str(strict), protocol="auto")
    assert until_found(bridged.driver, ALIAS, "root") <= 1
    assert bridged.driver.lookup(ALIAS, "root") == Found("vuser")
    assert "trying the 2020 dialect" in bridged.log()


def test_forced_protocol_skips_detection(bridge: Start, tmp_path: Path,
                                         data_file: Path) -> None:
    bridged = bridge(f"{child(tmp_path, 'table_2020.py')} {data_file}", protocol="2020")
    assert bridged.driver.lookup(ALIAS, "root") == Found("0:0:/root")
    assert "0.1 handshake" not in bridged.log() and "config|" not in bridged.log()


# --- faults -------------------------------------------------------------------------------

def test_garbage_is_minus_one_with_a_log_line(bridge: Start, tmp_path: Path,
                                              data_file: Path) -> None:
    bridged, mode = fault_child(bridge, tmp_path, data_file)
    mode.write_text("garbage")
    assert bridged.driver.lookup(USERINFO, "vuser") == Error("-1")
    line = bridged.wait_log(r"table aliases\[\d+\]: malformed line from the child.*")[0]
    assert "'this is not a reply'" in line and "answering -1" in line
    mode.write_text("ok")
    assert bridged.driver.lookup(USERINFO, "vuser") == Found("65534:65534:/var/empty")


def test_hung_child_then_late_reply_discarded(bridge: Start, tmp_path: Path,
                                              data_file: Path) -> None:
    bridged, mode = fault_child(bridge, tmp_path, data_file)
    mode.write_text("hang:1.5")
    started = time.monotonic()
    assert bridged.driver.lookup(USERINFO, "vuser") == Error("-1")
    assert time.monotonic() - started < 1.5  # answered at the deadline, not by the child
    mode.write_text("ok")
    bridged.wait_log(r"late reply to request \w+ discarded")
    assert bridged.driver.lookup(USERINFO, "vuser") == Found("65534:65534:/var/empty")


def test_child_dies_mid_request_and_is_respawned(bridge: Start, tmp_path: Path,
                                                 data_file: Path) -> None:
    bridged, mode = fault_child(bridge, tmp_path, data_file, deadline=5)
    mode.write_text("exit")
    started = time.monotonic()
    assert bridged.driver.lookup(USERINFO, "vuser") == Error("-1")
    assert time.monotonic() - started < 5  # at once, not at the deadline
    mode.write_text("ok")
    until_found(bridged.driver, USERINFO, "vuser")
    assert len(set(bridged.child_pids())) >= 2


def test_child_killed_by_pid_then_crash_loop_then_recovery(bridge: Start, tmp_path: Path,
                                                           data_file: Path) -> None:
    bridged, mode = fault_child(bridge, tmp_path, data_file)
    first = bridged.child_pids()[0]
    mode.write_text("crash-start")
    os.kill(first, signal.SIGKILL)
    bridged.wait_log(rf"child pid {first} was killed by SIGKILL")
    assert bridged.driver.lookup(USERINFO, "vuser") == Error("-1")  # meanwhile: -1
    bridged.wait_log(r"crashing at start", count=2)
    assert bridged.driver.lookup(USERINFO, "vuser") == Error("-1")
    mode.write_text("ok")
    until_found(bridged.driver, USERINFO, "vuser")
    assert "exited with status 3 during the handshake" in bridged.log()


def test_missing_child_program_is_retried_not_fatal(bridge: Start, tmp_path: Path,
                                                    data_file: Path) -> None:
    missing = tmp_path / "later.sh"
    bridged = bridge(f"{missing} {data_file}", max_backoff=0.3)
    assert bridged.driver.lookup(ALIAS, "root") == Error("-1")
    assert "cannot start the child" in bridged.wait_log(r".*cannot start the child.*")[0]
    missing.write_text((REPO / "tests" / "children" / "shell_table.sh").read_text())
    missing.chmod(0o755)
    until_found(bridged.driver, ALIAS, "root")


def test_eof_ends_the_bridge_and_stops_the_child(bridge: Start, tmp_path: Path,
                                                 data_file: Path) -> None:
    bridged, _ = fault_child(bridge, tmp_path, data_file)
    (pid,) = bridged.child_pids()
    assert bridged.driver.close(timeout=10) == 0
    assert not ours(pid, tmp_path)
    assert f"child pid {pid} exited with status 0" in bridged.log()


def test_sigterm_stops_the_child_too(bridge: Start, tmp_path: Path, data_file: Path) -> None:
    bridged, _ = fault_child(bridge, tmp_path, data_file)
    (pid,) = bridged.child_pids()
    bridged.driver.process.send_signal(signal.SIGTERM)
    assert bridged.driver.process.wait(10) == 0
    assert not ours(pid, tmp_path)


def test_daemonized_smtpd_stderr_devnull_still_serves(tmp_path: Path, data_file: Path) -> None:
    """smtpd daemonized gives tables /dev/null as stderr: the bridge logs to syslog instead
    and serves as usual (its child's stderr lines too, without blocking anything)."""
    shell = child(tmp_path, "shell_table.sh")
    with Driver([str(BRIDGE)], protocol="imsg", table="aliases",
                config=f"{shell} {data_file}", stderr=subprocess.DEVNULL) as driver:
        for _ in range(3):
            assert driver.lookup(ALIAS, "root") == Found("0:0:/root")
        assert driver.lookup(USERINFO, "nobody") == NotFound()
    probe = "from opensmtpd.stdio import stderr_is_devnull as f; print(f())"
    for stderr, expected in ((subprocess.DEVNULL, "True"), (subprocess.PIPE, "False")):
        out = subprocess.run([sys.executable, "-c", probe], stderr=stderr, stdout=subprocess.PIPE,
                             text=True, timeout=30).stdout.strip()
        assert out == expected


def test_log_lines_are_labelled_by_the_table_once_smtpd_names_it(
        tmp_path: Path, data_file: Path) -> None:
    """``table-procexec[PID]: …`` until OPEN, ``table NAME[PID]: …`` from then on."""
    shell = child(tmp_path, "shell_table.sh")
    log_path = tmp_path / "stderr"
    ours_end, theirs = socket.socketpair()
    with open(log_path, "wb") as err:
        process = subprocess.Popen(["aliases", f"{shell} {data_file}"], executable=str(BRIDGE),
                                   stdin=theirs, stderr=err)
    theirs.close()
    framer = imsg.Framer()

    def ask(message: bytes, op: Op | None) -> object:
        ours_end.sendall(message)
        deadline = time.monotonic() + 10
        while (reply := framer.next_message()) is None and time.monotonic() < deadline:
            if select.select([ours_end], [], [], 0.5)[0]:
                framer.feed(ours_end.recv(65536))
        assert reply is not None, log_path.read_text()
        return imsg.parse_reply(op, *reply)

    try:
        assert ask(imsg.request(Op.LOOKUP, ALIAS, "root", 1), Op.LOOKUP) == Error("-1")
        assert ask(imsg.open_request("users", 1), None) is None
        assert ask(imsg.request(Op.LOOKUP, ALIAS, "a\nb", 1), Op.LOOKUP) == Error("-1")
    finally:
        ours_end.close()
        assert process.wait(10) == 0
    text = log_path.read_text()
    pid = process.pid
    assert f"table-procexec[{pid}]: lookup alias 'root': request before OPEN" in text
    assert f"table users[{pid}]: lookup alias 'a\\nb': the key holds a line break" in text
    assert f"table users[{pid}]: EOF from smtpd: stopping" in text
