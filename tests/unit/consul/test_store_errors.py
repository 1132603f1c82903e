"""Every failure of the embedded store names its real cause (issue 14), on real files:
missing, unreadable by the table's user, a directory, garbage bytes, a damaged SQLite
file, another SQLite database, a lock held by another process. The hint to create the
store with 'table-consul kv put' is given for a missing store only."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import opensmtpd
from opensmtpd.consul.store import EmbeddedSource, EmbeddedStore, StoreError

HINT = "table-consul kv put"
TABLE_USER = "opensmtpd"  # the user smtpd runs tables as (Debian's package)


def message(path: Path | str) -> str:
    with pytest.raises(StoreError) as caught:
        EmbeddedSource(str(path)).list("t/")
    return str(caught.value)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="store-errors-", dir="/tmp"))
    path.chmod(0o755)
    # the library as that user can import it: the checkout (and its virtualenv) may sit
    # in a directory only root can enter, e.g. one made by mktemp -d
    shutil.copytree(Path(opensmtpd.__file__).parent, path / "lib" / "opensmtpd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    yield path
    path.chmod(0o755)
    shutil.rmtree(path)


def store(path: Path) -> Path:
    EmbeddedStore(str(path)).put("t/alias/root", b"gilles")
    return path


def read_as_table_user(path: Path, shared: Path) -> str:
    """What the table, running as the table's user (Debian's python3 and the library
    copied into ``shared``), says when it reads ``path``."""
    code = ("import sys\nfrom opensmtpd.consul.store import EmbeddedSource, StoreError\n"
            "try:\n    EmbeddedSource(sys.argv[1]).list('t/')\n"
            "except StoreError as exc:\n    print(exc)\nelse:\n    print('read fine')\n")
    result = subprocess.run(["/usr/bin/python3", "-c", code, str(path)], user=TABLE_USER,
                            capture_output=True, text=True, timeout=60, cwd="/",
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(shared / "lib")})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_missing_store_gets_the_create_hint(tmp_path: Path) -> None:
    text = message(tmp_path / "none.sqlite3")
    assert "no such store" in text and HINT in text
    with pytest.raises(StoreError, match=f"no such store.*{HINT}"):
        EmbeddedStore(str(tmp_path / "none.sqlite3")).get("x")


def test_unreadable_file_names_the_permission_and_the_user(shared_dir: Path) -> None:
    path = store(shared_dir / "kv.sqlite3")
    assert read_as_table_user(path, shared_dir) == "read fine"  # 0644: the user can read it
    path.chmod(0o000)
    text = read_as_table_user(path, shared_dir)
    assert text == (f"{path}: permission denied to user {TABLE_USER} (the store and every "
                    "directory above it must be readable by the table's user)")


def test_unreadable_directory_is_a_permission_error_not_a_missing_store(
        shared_dir: Path) -> None:
    directory = shared_dir / "table-consul"
    directory.mkdir()
    path = store(directory / "kv.sqlite3")
    directory.chmod(0o000)  # the issue's `chmod 000 /var/lib/table-consul`
    text = read_as_table_user(path, shared_dir)
    assert f"permission denied to user {TABLE_USER}" in text and HINT not in text


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    text = message(tmp_path)
    assert text == f"{tmp_path}: is a directory, not a store"


def test_garbage_bytes_are_not_an_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    path.write_bytes(bytes(range(256)) * 64)
    text = message(path)
    assert text == f"{path}: not an SQLite database (corrupt, or another kind of file)"
    with pytest.raises(StoreError, match="not an SQLite database"):
        EmbeddedStore(str(path)).put("k", b"v")


def test_damaged_sqlite_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    writer = EmbeddedStore(str(path))
    for i in range(200):
        writer.put(f"t/alias/user{i}", b"x" * 100)
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xa5" * (len(data) - page)  # every page but the first (the schema)
    path.write_bytes(bytes(data))
    text = message(path)
    assert text.startswith(f"{path}: corrupt SQLite database (") and HINT not in text


def test_another_sqlite_database_is_not_a_table_consul_store(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE users (name TEXT)")
    other.close()
    text = message(path)
    assert text.startswith(f"{path}: not a table-consul store (no such table")
    assert HINT not in text


def test_a_lock_held_by_another_process_is_named(tmp_path: Path) -> None:
    path = store(tmp_path / "kv.sqlite3")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
         "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\nsys.stdin.read()\n",
         str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        text = message(path)
        assert text.startswith(f"{path}: locked: another process held a lock on it for "
                               "more than 2s (database is locked)"), text
        with pytest.raises(StoreError, match="locked: another process"):
            EmbeddedStore(str(path)).put("t/alias/x", b"y")
    finally:
        holder.communicate(timeout=30)
    assert EmbeddedSource(str(path)).list("t/").items  # released: readable again

