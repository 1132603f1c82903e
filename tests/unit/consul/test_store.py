"""The embedded store: Consul's KV semantics in SQLite, watched through data_version."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from opensmtpd.consul.store import EmbeddedSource, EmbeddedStore, StoreError


def test_put_get_delete_list(tmp_path: Path) -> None:
    store = EmbeddedStore(str(tmp_path / "sub" / "kv.sqlite3"))
    store.put("aliases/alias/root", b"gilles")
    store.put("aliases/alias/postmaster", b"root")
    store.put("domains/domain/example.org", b"")
    assert store.get("aliases/alias/root") == b"gilles"
    assert store.get("aliases/alias/nobody") is None
    store.put("aliases/alias/root", b"henry")
    assert store.get("aliases/alias/root") == b"henry"
    listing = store.list("aliases/")
    assert listing.items == (("aliases/alias/postmaster", b"root"),
                             ("aliases/alias/root", b"henry"))
    assert [k for k, _ in store.list().items] == [
        "aliases/alias/postmaster", "aliases/alias/root", "domains/domain/example.org"]
    assert store.delete("aliases/alias/root") == 1
    assert store.delete("aliases/alias/root") == 0
    store.put("aliases/alias/a", b"1")
    assert store.delete("aliases/", recurse=True) == 2
    assert store.list("aliases/").items == ()
    assert store.list().items == (("domains/domain/example.org", b""),)


def test_every_write_bumps_the_index_and_only_writes(tmp_path: Path) -> None:
    store = EmbeddedStore(str(tmp_path / "kv.sqlite3"))
    store.put("a", b"1")
    first = store.list().index
    store.put("b", b"2")
    assert store.list().index == first + 1
    store.delete("nothing")
    assert store.list().index == first + 1  # a no-op delete changes nothing


def test_store_is_created_world_readable(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = tmp_path / "dir" / "kv.sqlite3"
        EmbeddedStore(str(path)).put("a", b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_reading_a_missing_store_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.sqlite3")
    with pytest.raises(StoreError, match="table-consul kv put"):
        EmbeddedSource(missing).list("t/")
    with pytest.raises(StoreError, match="no such store"):
        EmbeddedStore(missing).get("x")
    assert not Path(missing).exists()  # reading never creates it


def test_not_a_store_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        EmbeddedSource(str(path)).list("t/")


def test_source_opens_read_only(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    EmbeddedStore(str(path)).put("t/alias/root", b"gilles")
    path.chmod(0o444)
    tmp_path.chmod(0o555)  # as user opensmtpd sees /var/lib/table-consul: no write access
    try:
        listing = EmbeddedSource(str(path)).list("t/")
    finally:
        tmp_path.chmod(0o755)
        path.chmod(0o644)
    assert listing.items == (("t/alias/root", b"gilles"),)


def test_blocking_read_returns_on_a_change_from_another_process_or_connection(
        tmp_path: Path) -> None:
    path = str(tmp_path / "kv.sqlite3")
    store = EmbeddedStore(path)
    store.put("t/alias/root", b"gilles")
    source = EmbeddedSource(path, poll_interval=0.02)
    index = source.list("t/").index
    writer = threading.Timer(0.2, store.put, args=("t/alias/root", b"henry"))
    writer.start()
    started = time.monotonic()
    listing = source.list("t/", index=index, wait=30)
    writer.join()
    assert time.monotonic() - started < 29  # returned on the change, not on the wait
    assert listing.index > index and listing.items == (("t/alias/root", b"henry"),)


def test_blocking_read_times_out_with_the_same_index(tmp_path: Path) -> None:
    path = str(tmp_path / "kv.sqlite3")
    EmbeddedStore(path).put("t/alias/root", b"gilles")
    source = EmbeddedSource(path, poll_interval=0.02)
    index = source.list("t/").index
    assert source.list("t/", index=index, wait=0.1).index == index


def test_a_replaced_file_is_reported_then_read_again(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    EmbeddedStore(str(path)).put("t/alias/root", b"old")
    source = EmbeddedSource(str(path), poll_interval=0.02)
    index = source.list("t/").index
    fresh = tmp_path / "new.sqlite3"
    EmbeddedStore(str(fresh)).put("t/alias/root", b"new")
    os.replace(fresh, path)  # same index (one write each), another file
    # a blocking read cannot trust the index of another file: an error makes the
    # watcher re-read everything, which the next (plain) read does
    with pytest.raises(StoreError, match="was replaced"):
        source.list("t/", index=index, wait=5)
    assert source.list("t/").items == (("t/alias/root", b"new"),)
    # replaced during the wait
    index = source.list("t/").index
    other = tmp_path / "other.sqlite3"
    EmbeddedStore(str(other)).put("t/alias/root", b"other")
    threading.Timer(0.1, os.replace, args=(other, path)).start()
    with pytest.raises(StoreError, match="was replaced"):
        source.list("t/", index=index, wait=5)
    assert source.list("t/").items == (("t/alias/root", b"other"),)


def test_other_prefixes_are_not_listed(tmp_path: Path) -> None:
    path = str(tmp_path / "kv.sqlite3")
    store = EmbeddedStore(path)
    for key in ("t/a", "t0/a", "t/b/c", "s/a", "u"):
        store.put(key, b"x")
    assert [k for k, _ in EmbeddedSource(path).list("t/").items] == ["t/a", "t/b/c"]
