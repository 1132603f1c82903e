"""The seed's own 2020 peers behind the real table-procexec and under opensmtpd-table:
tests/children/go_table_2020.py behaves exactly like a table built on poolpOrg/go-opensmtpd,
py_table_2020.py like one built on poolpOrg/py-opensmtpd (table-protocols.md §4). Both
exit on the first line that is not the article's named form."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from opensmtpd.cli.table import main as opensmtpd_table
from opensmtpd.table import Error, Found, NotFound, Service, Updated

from .conftest import Bridged, child

PEERS = ["go_table_2020.py", "py_table_2020.py"]
Start = Callable[..., Bridged]


@pytest.fixture
def seed_data(tmp_path: Path) -> Path:
    path = tmp_path / "seed"
    path.write_text("root gilles\ngilles@poolp.org\n")
    return path


@pytest.mark.parametrize("peer", PEERS)
def test_peer_behind_the_bridge_detected_and_served(bridge: Start, tmp_path: Path,
                                                   seed_data: Path, peer: str) -> None:
    """Default settings: the peer dies on the 0.1 handshake (as the libraries do), is
    restarted in the 2020 dialect and answers every request in the named form."""
    bridged = bridge(f"{child(tmp_path, peer)} {seed_data}", table="seed")
    driver = bridged.driver
    assert driver.lookup(Service.ALIAS, "root") == Found("gilles")
    assert driver.check(Service.MAILADDR, "gilles@poolp.org") == Found()
    assert driver.check(Service.MAILADDR, "eric@poolp.org") == NotFound()
    assert driver.lookup(Service.ALIAS, "ghost") == NotFound()
    assert driver.update() == Updated()
    log = bridged.log()
    assert "missing atoms: config|smtpd-version|7.6.0-procexec" in log  # its own words
    assert "the child answers in the 2020 dialect: keeping it" in log
    # one 0.1 attempt, then one 2020 child that never exited again
    assert len(set(bridged.child_pids())) == 2


@pytest.mark.parametrize("peer", PEERS)
def test_peer_exits_on_the_unnamed_form(bridge: Start, tmp_path: Path, seed_data: Path,
                                        peer: str) -> None:
    """What the bridge sent before: table|0.1|ts|op|id|… — the peer reads the id as the
    op and exits; every lookup is -1 (and smtpd stays up)."""
    bridged = bridge(f"{child(tmp_path, peer)} {seed_data}", table="seed", protocol="2020",
                     form_2020="unnamed", deadline=2)
    assert bridged.driver.lookup(Service.ALIAS, "root") == Error("-1")
    bridged.wait_log(r"unsupported operation: [0-9a-f]{16}")
    bridged.wait_log(r"child pid \d+ exited with status 1")


@pytest.mark.parametrize("peer", PEERS)
def test_opensmtpd_table_speaks_the_named_form(seed_data: Path, tmp_path: Path, peer: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    program = str(child(tmp_path, peer))
    base = ["--protocol", "2020", "--table", "seed", "--config", str(seed_data), "--", program]
    assert opensmtpd_table([*base, "lookup", "alias", "root"]) == 0
    assert opensmtpd_table([*base, "check", "mailaddr", "gilles@poolp.org"]) == 0
    assert opensmtpd_table([*base, "check", "mailaddr", "eric@poolp.org"]) == 1
    assert capsys.readouterr().out.split("\n")[:3] == ["found gilles", "found", "not-found"]
    unnamed = ["--protocol", "2020", "--form-2020", "unnamed", *base[2:]]
    assert opensmtpd_table([*unnamed, "lookup", "alias", "root"]) == 3  # the peer exited
    assert "smtpd would exit" in capsys.readouterr().err


# --- the test peers are faithful to the libraries they stand for ------------------------

def run_peer(tmp_path: Path, peer: str, data: bytes, seed_data: Path
             ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(child(tmp_path, peer)), str(seed_data)], input=data,
                          capture_output=True, timeout=30)


def test_go_peer_reads_like_bufio_scanner(tmp_path: Path, seed_data: Path) -> None:
    ts = "1590631921.2944137"
    lines = (f"table|0.1|{ts}|seed|check|deadbeefdeadbeef|mailaddr|gilles@poolp.org\r\n"
             f"table|0.1|{ts}|seed|lookup|0123456789abcdef|bogus|root\n"
             f"table|0.1|{ts}|seed|update|00000000000000ff")  # last line, no "\n"
    done = run_peer(tmp_path, "go_table_2020.py", lines.encode(), seed_data)
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout == (b"table-result|deadbeefdeadbeef|found\n"
                           b"table-result|0123456789abcdef|found|gilles\n"
                           b"table-result|00000000000000ff|updated\n")
    # a line that does not fit the 64 KiB token buffer ends Scan(): exit 0, silently
    long = f"table|0.1|{ts}|seed|check|aa|mailaddr|".encode() + b"x" * 65536 + b"\n"
    done = run_peer(tmp_path, "go_table_2020.py", long, seed_data)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    fits = f"table|0.1|{ts}|seed|check|aa|mailaddr|".encode()
    fits += b"x" * (65535 - len(fits)) + b"\n"  # 65535 bytes and its "\n": still a token
    done = run_peer(tmp_path, "go_table_2020.py", fits, seed_data)
    assert done.stdout == b"table-result|aa|not-found\n"


@pytest.mark.parametrize(("line", "status", "message"), [
    (b"config|smtpd-version|7.6.0-procexec\n", 1, b"missing atoms: config|smtpd-version"),
    (b"table|0.2|0|seed|check|aa|mailaddr|x\n", 1, b"unsupported protocol version: 0.2"),
    (b"table|0.1|0|check|aa|mailaddr|x\n", 1, b"unsupported operation: aa"),
    (b"table|0.1|0|seed|check|aa\n", 2, b"index out of range [6] with length 6"),
    (b"table|0.1|0|seed|fetch|aa|source\n", 2, b"nil pointer dereference"),  # no OnFetch
])
def test_go_peer_dies_like_go(tmp_path: Path, seed_data: Path, line: bytes, status: int,
                              message: bytes) -> None:
    done = run_peer(tmp_path, "go_table_2020.py", line, seed_data)
    assert done.returncode == status and message in done.stderr and done.stdout == b""


def test_py_peer_strips_and_exits_like_py_opensmtpd(tmp_path: Path, seed_data: Path) -> None:
    done = run_peer(tmp_path, "py_table_2020.py",
                    b"table|0.1|0|seed|lookup|aa|alias|root   \n", seed_data)
    assert (done.returncode, done.stdout) == (0, b"table-result|aa|found|gilles\n")
    done = run_peer(tmp_path, "py_table_2020.py", b"config|ready\n", seed_data)
    assert done.returncode == 1 and b"missing atoms: config|ready" in done.stderr
    done = run_peer(tmp_path, "py_table_2020.py", b"table|0.1|0|seed|fetch|aa|source\n",
                    seed_data)
    assert done.returncode == 1 and b"TypeError" in done.stderr  # no on_fetch registered
