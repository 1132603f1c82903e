"""bench/table_hotpath.py runs the library's real path and says so in its exit status:
the first reply of each protocol is read back and judged (timings are never judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from table_hotpath import right_reply

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("protocol", ["native", "imsg"])
def test_the_bench_runs_and_its_first_reply_is_right(protocol: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "table_hotpath.py"), "--count", "200",
                           "--protocol", protocol], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "library" in done.stdout and "minimal" in done.stdout


def test_a_wrong_reply_is_refused() -> None:
    assert right_reply("native", b"lookup-result|0000abcd|found|1000:1000:/home/alice\n")
    assert not right_reply("native", b"lookup-result|0000abcd|error|deadline exceeded\n")
    assert not right_reply("imsg", b"\0" * 16 + b"\xff\xff\xff\xff")
