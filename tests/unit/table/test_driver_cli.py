"""opensmtpd-table: exit statuses, and the conformance battery against real backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opensmtpd.cli.table import UsageError, main, split_action

from .helpers import TABLE_PASSWD

BACKEND = """
from opensmtpd.table import Table, TempFail

table = Table()

@table.lookup("alias")
def alias(key, request):
    if key == "boom":
        raise TempFail("directory down")
    if key == "nobody":
        return None
    return f"{key}@{request.table}.example.org"

@table.lookup("credentials")
def credentials(key):
    return "alice:$2b$10$SECRETHASHabcdefghijkl"

@table.check("domain")
def domain(key):
    return key == "example.org"

@table.fetch("source")
def source():
    return "127.0.0.1"

table.run()
"""

# A native backend written by hand, with the mistakes smtpd 7.6 dies of (§3.4, E03/E12).
BROKEN = """
import sys

for line in sys.stdin:
    fields = line.rstrip("\\n").split("|")
    if fields == ["config", "ready"]:
        print("register|alias\\nregister|source\\nregister|ready", flush=True)
    elif fields[0] == "table" and fields[4] == "update":
        print(f"update-result|{fields[5]}|ok", flush=True)
    elif fields[0] == "table" and fields[4] == "fetch":
        print(f"lookup-result|{fields[6]}|found|127.0.0.1", flush=True)  # the man page's
    elif fields[0] == "table" and fields[4] == "lookup":
        print(f"lookup-result|{fields[6]}|found", flush=True)  # bare found on a lookup
    elif fields[0] == "table":
        print(f"{fields[4]}-result|{fields[6]}|not-found", flush=True)
"""

SILENT = """
import sys

for line in sys.stdin:
    if line == "config|ready\\n":
        print("register|alias\\nregister|ready", flush=True)
"""

EXITS = """
import sys
sys.exit(0)
"""


@pytest.fixture
def backend(make_backend: Callable[..., Path]) -> str:
    return str(make_backend(BACKEND))


@pytest.mark.parametrize("protocol", ["native", "imsg", "2020"])
def test_found_is_0(backend: str, protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--protocol", protocol, "--table", "aliases", "--", backend, "lookup", "alias", "root"]
    assert main(args) == 0  # the table name reaches the backend in every generation (2020:
    # the article's named form)
    assert capsys.readouterr().out.strip() == "found root@aliases.example.org"


def test_2020_unnamed_form_only_when_asked(backend: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--protocol", "2020", "--form-2020", "unnamed", "--table", "aliases", "--",
            backend, "lookup", "alias", "root"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == "found root@.example.org"  # no name in it


def test_check_fetch_update(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--", backend, "check", "domain", "example.org"]) == 0
    assert main(["--", backend, "fetch", "source"]) == 0
    assert main(["--", backend, "update"]) == 0
    assert capsys.readouterr().out.split("\n")[:3] == ["found", "found 127.0.0.1", "updated"]


def test_not_found_is_1(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--", backend, "lookup", "alias", "nobody"]) == 1
    assert main(["--", backend, "check", "domain", "example.net"]) == 1
    assert capsys.readouterr().out.split("\n")[:2] == ["not-found", "not-found"]


def test_error_is_2(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--", backend, "lookup", "alias", "boom"]) == 2
    assert "directory down" in capsys.readouterr().out
    assert main(["--", backend, "lookup", "userinfo", "root"]) == 2  # no handler


def test_credentials_value_is_hidden(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--", backend, "lookup", "credentials", "alice"]) == 0
    out = capsys.readouterr().out
    assert "found" in out and "hidden" in out
    assert "SECRETHASH" not in out


@pytest.mark.parametrize(("action", "params"), [
    ("lookup", ["alias", "root"]),       # bare "found" on a lookup
    ("fetch", ["source"]),               # lookup-result for a fetch
])
def test_violation_is_3(make_backend: Callable[..., Path], action: str,
                        params: list[str]) -> None:
    assert main(["--", str(make_backend(BROKEN)), action, *params]) == 3


def test_hang_is_3(make_backend: Callable[..., Path]) -> None:
    assert main(["--timeout", "0.5", "--", str(make_backend(SILENT)),
                 "lookup", "alias", "root"]) == 3


def test_backend_exit_is_3(make_backend: Callable[..., Path]) -> None:
    assert main(["--", str(make_backend(EXITS)), "lookup", "alias", "root"]) == 3


def test_missing_command_is_3(tmp_path: Path) -> None:
    assert main(["--", str(tmp_path / "absent"), "lookup", "alias", "root"]) == 3


@pytest.mark.parametrize("argv", [
    [],
    ["--"],
    ["--", "/bin/true"],                                   # no action
    ["--", "/bin/true", "lookup", "alias"],                # lookup needs a key
    ["--", "/bin/true", "frobnicate", "alias", "root"],
    ["--", "/bin/true", "lookup", "bogus", "root"],        # unknown service
    ["--protocol", "bogus", "--", "/bin/true", "update"],  # not argparse's 2 (= error reply)
    ["--timeout", "soon", "--", "/bin/true", "update"],
    ["--no-such-option", "--", "/bin/true", "update"],
    ["--key", "alias", "--", "/bin/true", "conform"],         # not SERVICE=KEY
    ["--key", "alias=", "--", "/bin/true", "conform"],
    ["--key", "bogus=root", "--", "/bin/true", "conform"],    # unknown service
])
def test_usage_is_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 64
    assert "opensmtpd-table" in capsys.readouterr().err


def test_split_action() -> None:
    assert split_action(["./t.py", "lookup", "alias", "root"]) == (
        ["./t.py"], "lookup", ["alias", "root"])
    assert split_action(["./t.py", "--flag", "/etc/x", "fetch", "source"]) == (
        ["./t.py", "--flag", "/etc/x"], "fetch", ["source"])
    assert split_action(["./t.py", "update"]) == (["./t.py"], "update", [])
    # the last action word that fits wins: backend arguments may look like actions
    assert split_action(["./t.py", "check", "lookup", "alias", "root"]) == (
        ["./t.py", "check"], "lookup", ["alias", "root"])
    with pytest.raises(UsageError):
        split_action(["lookup", "alias", "root"])  # no command before the action


# --- conform --------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["native", "imsg", "2020"])
def test_conform_passes_on_the_seed_example(seed_script: Path, protocol: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--protocol", protocol, "--", str(seed_script), "conform"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("PASS")
    assert "FAIL" not in out
    assert "lookup alias: found 'gilles@poolp.org'" in out  # the battery asked for real
    assert "exit on EOF: exited with status 0" in out


def test_conform_fails_a_broken_backend(make_backend: Callable[..., Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--", str(make_backend(BROKEN)), "conform"]) == 3
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("FAIL")
    assert "FAIL lookup alias" in out
    assert "FAIL fetch source" in out


def test_conform_key_option_replaces_a_probe_key(seed_script: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--key", "alias=ghost", "--key", "MAILADDR=gilles@poolp.org", "--",
                 str(seed_script), "conform"]) == 0
    out = capsys.readouterr().out
    assert "ok   lookup alias: not-found" in out
    assert "ok   check mailaddr: found" in out


def test_conform_fails_a_silent_backend(make_backend: Callable[..., Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--timeout", "0.3", "--", str(make_backend(SILENT)), "conform"]) == 3
    assert "would hang" in capsys.readouterr().out


# --- Debian's C backend (extras 6.7.1 table-passwd, imsg; table-protocols.md §1.8) ---------

needs_table_passwd = pytest.mark.skipif(not TABLE_PASSWD.exists(),
                                        reason="Debian's opensmtpd-extras is not installed")


@pytest.fixture
def passwd(tmp_path: Path) -> str:
    path = tmp_path / "passwd"
    path.write_text(
        "alice:$2b$10$abcdefghijklmnopqrstuv:1000:1000::/home/alice:/bin/sh\n"
        "root:$2b$10$rootrootrootrootrootro:0:0::/root:/bin/sh\n")
    return str(path)


@needs_table_passwd
def test_conform_passes_on_table_passwd(passwd: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--protocol", "imsg", "--config", passwd, "--", str(TABLE_PASSWD), "conform"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("PASS")
    assert "lookup userinfo: found '0:0:/root'" in out


@needs_table_passwd
def test_table_passwd_by_hand(passwd: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--protocol", "imsg", "--config", passwd, "--", str(TABLE_PASSWD)]
    assert main([*base, "lookup", "userinfo", "alice"]) == 0
    assert main([*base, "lookup", "credentials", "bob"]) == 1
    assert main([*base, "check", "userinfo", "alice"]) == 2  # no check handler: -1
    assert main([*base, "update"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["found 1000:1000:/home/alice", "not-found", "error (-1)", "updated"]
