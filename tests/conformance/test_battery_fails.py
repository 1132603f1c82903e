"""The battery can still FAIL: a FAKE backend (tests/children/fake_broken_table.py), broken
in one way at a time that no real backend shows on demand, is failed for exactly that, and
for nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from opensmtpd.cli.table import main

CHILDREN = Path(__file__).resolve().parents[2] / "tests" / "children"


@pytest.fixture
def fake(tmp_path: Path) -> str:
    source = (CHILDREN / "fake_broken_table.py").read_text()
    path = tmp_path / "fake_broken_table.py"
    path.write_text(f"#!{sys.executable}\n" + source.split("\n", 1)[1])
    path.chmod(0o755)
    return str(path)


def conform(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    status = main([*argv, "conform"])
    lines = capsys.readouterr().out.splitlines()
    return status, [line for line in lines if line.startswith("FAIL")]


def test_wrong_id_fails_every_request(fake: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, failed = conform(capsys, "--", fake, "native", "wrong-id")
    assert status == 3 and failed[-1].startswith("FAIL: ")
    assert any(line.startswith("FAIL lookup credentials: smtpd would exit: failed to parse "
                               "reply 'lookup-result|ffffffff'") for line in failed)
    assert all("smtpd would exit" in line for line in failed[:-1])


def test_not_found_for_an_unknown_service_fails(fake: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The key is the one the fake said it holds (check credentials alice: found)."""
    status, failed = conform(capsys, "--protocol", "imsg", "--", fake, "imsg",
                             "notfound-unknown")
    assert status == 3
    assert failed == [
        "FAIL unknown service number 0x4000: not-found for 'alice', which the table holds "
        "(check credentials found it): smtpd would bounce mail (5xx) on a service the table "
        "cannot know; answer error",
        "FAIL: 41 ok, 0 warn, 1 failed"]


def test_value_smtpd_cannot_parse_fails(fake: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, failed = conform(capsys, "--protocol", "imsg", "--key", "userinfo=alice", "--",
                             fake, "imsg", "bad-userinfo")
    assert status == 3
    assert failed[0] == ("FAIL lookup userinfo: found 'x:y:/home/alice': smtpd cannot parse it "
                         "(userinfo uid or gid is not a number smtpd accepts): a 4xx where the "
                         "table meant found")
    assert len(failed) == 2  # that, and the summary
    # without a key it holds, the fault is out of the probes' reach: nothing to fail
    assert conform(capsys, "--protocol", "imsg", "--", fake, "imsg", "bad-userinfo")[0] == 0


def test_bad_reply_type_fails(fake: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, failed = conform(capsys, "--protocol", "imsg", "--", fake, "imsg", "fail-type")
    assert status == 3
    assert "FAIL lookup alias: smtpd would exit: bad response type 1" in failed


def test_the_fake_is_correct_otherwise(fake: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The same fake without its fault passes: each FAIL above is that fault's."""
    assert conform(capsys, "--protocol", "imsg", "--key", "userinfo=alice", "--", fake,
                   "imsg", "none")[0] == 0
    assert conform(capsys, "--", fake, "native", "none")[0] == 0
