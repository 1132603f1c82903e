"""The embedded store: Consul's KV semantics in one SQLite file (standard library only).

For a single machine and for the demo: the same keys (``aliases/alias/root``), the same
replica and watch behaviour as Consul. Every write bumps a store-wide index (Consul's
X-Consul-Index); a reader "blocks" by polling ``PRAGMA data_version``, which changes
when another connection commits, so a change is seen within ``poll_interval``.

The table runs as user ``opensmtpd`` and only reads: it opens the file read-only, and
the file uses the rollback journal (not WAL, whose readers need write access). The
``table-consul kv`` command writes it as root and leaves it world-readable (0644).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .listing import Listing

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB,
    modify_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('index', 1);
"""
BUSY_TIMEOUT = 2.0
_TOP = "\U0010ffff"  # sorts after every key with the same prefix (BINARY collation)


class StoreError(Exception):
    """The embedded store could not be read or written."""


_HEADER = b"SQLite format 3\x00"
_CREATE_HINT = "create it with 'table-consul kv put KEY VALUE'"


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def diagnose(path: str, exc: BaseException) -> StoreError:
    """The real cause of a failure on the store, with a hint only where it is right:
    missing, unreadable, not a file, corrupt, locked, not a table-consul store."""
    try:
        info = os.stat(path)
        with open(path, "rb") as file:
            header = file.read(len(_HEADER))
    except FileNotFoundError:
        return StoreError(f"{path}: no such store ({_CREATE_HINT})")
    except PermissionError:
        return StoreError(f"{path}: permission denied to user {_user()} (the store and "
                          "every directory above it must be readable by the table's user)")
    except IsADirectoryError:
        return StoreError(f"{path}: is a directory, not a store")
    except OSError as err:
        return StoreError(f"{path}: cannot read it: {err.strerror or err}")
    text = str(exc)
    if (info.st_size and header != _HEADER) or "not a database" in text:
        return StoreError(f"{path}: not an SQLite database (corrupt, or another kind of "
                          "file)")
    if "malformed" in text or "corrupt" in text:
        return StoreError(f"{path}: corrupt SQLite database ({text})")
    if "locked" in text or "busy" in text:
        return StoreError(f"{path}: locked: another process held a lock on it for more "
                          f"than {BUSY_TIMEOUT:g}s ({text})")
    if "no such table" in text:
        return StoreError(f"{path}: not a table-consul store ({text})")
    return StoreError(f"{path}: {type(exc).__name__}: {text}")


def _bounds(prefix: str) -> tuple[str, str]:
    return prefix, prefix + _TOP


def _read(connection: sqlite3.Connection, prefix: str) -> Listing:
    low, high = _bounds(prefix)
    connection.execute("BEGIN")
    try:
        index = connection.execute("SELECT value FROM meta WHERE name = 'index'").fetchone()
        rows = connection.execute("SELECT key, value FROM kv WHERE key >= ? AND key < ? "
                                  "ORDER BY key", (low, high)).fetchall()
    finally:
        connection.execute("COMMIT")
    if index is None:
        raise StoreError("not a table-consul store (no index)")
    return Listing(int(index[0]), tuple((str(k), None if v is None else bytes(v))
                                        for k, v in rows))


class EmbeddedSource:
    """The read side, for the replica: ``list(prefix, index=, wait=)`` like ConsulClient.

    One read-only connection per thread (the watcher's, and the forced re-sync's).
    """

    def __init__(self, path: str, poll_interval: float = 0.2) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._local = threading.local()

    def _stat(self) -> tuple[int, int]:
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise diagnose(self.path, exc) from None
        return info.st_dev, info.st_ino

    def _connect(self) -> tuple[sqlite3.Connection, bool]:
        """This thread's connection, and whether the file was replaced since its last one."""
        inode = self._stat()
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None and inode == self._local.inode:
            return connection, False
        replaced = connection is not None
        self.close()  # first use in this thread, or the file was replaced
        try:
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                         timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as exc:
            raise diagnose(self.path, exc) from None
        self._local.connection, self._local.inode = connection, inode
        return connection, replaced

    @staticmethod
    def _version(connection: sqlite3.Connection) -> int:
        return int(connection.execute("PRAGMA data_version").fetchone()[0])

    @staticmethod
    def _index(connection: sqlite3.Connection) -> int | None:
        row = connection.execute("SELECT value FROM meta WHERE name = 'index'").fetchone()
        return None if row is None else int(row[0])

    def list(self, prefix: str, *, index: int = 0, wait: float | None = None) -> Listing:
        try:
            connection, replaced = self._connect()
            # A replaced file may repeat indexes: make the watcher re-read it all.
            if index > 0 and wait and (replaced or not self._block(connection, index, wait)):
                raise StoreError(f"{self.path} was replaced: reading it again")
            return _read(connection, prefix)
        except sqlite3.Error as exc:
            self.close()
            raise diagnose(self.path, exc) from None

    def _block(self, connection: sqlite3.Connection, index: int, wait: float) -> bool:
        """Return when the index is no longer ``index`` or after ``wait`` (True), or when
        the file was replaced (False)."""
        deadline = time.monotonic() + wait
        version = self._version(connection)
        current = self._index(connection)
        while current == index:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(self.poll_interval, remaining))
            if self._stat() != self._local.inode:
                return False
            if (now := self._version(connection)) != version:
                version, current = now, self._index(connection)
        return True

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()


class EmbeddedStore:
    """The write side, for ``table-consul kv``: put, get, delete, list."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def _open(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        path = Path(self.path)
        try:
            if not path.exists():
                if not create:
                    raise StoreError(f"{self.path}: no such store ({_CREATE_HINT})")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(mode=0o644)
                path.chmod(0o644)  # readable by smtpd's table user whatever the umask
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise diagnose(self.path, exc) from None
        try:
            if create:
                connection.executescript(SCHEMA)
            yield connection
        except sqlite3.Error as exc:
            raise diagnose(self.path, exc) from None
        finally:
            connection.close()

    def _write(self, connection: sqlite3.Connection, sql: str, args: tuple[object, ...],
               ) -> int:
        """Run one write at a new store index (``:index`` in ``sql``); rows changed."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute("UPDATE meta SET value = value + 1 WHERE name = 'index'")
            index = int(connection.execute(
                "SELECT value FROM meta WHERE name = 'index'").fetchone()[0])
            names = {f"a{i}": arg for i, arg in enumerate(args)}
            changed = connection.execute(sql, {**names, "index": index}).rowcount
            connection.execute("COMMIT" if changed else "ROLLBACK")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return int(changed)

    def put(self, key: str, value: bytes) -> None:
        with self._open(create=True) as connection:
            self._write(connection, "INSERT INTO kv (key, value, modify_index) "
                        "VALUES (:a0, :a1, :index) ON CONFLICT(key) DO UPDATE SET "
                        "value = excluded.value, modify_index = excluded.modify_index",
                        (key, value))

    def get(self, key: str) -> bytes | None:
        with self._open() as connection:
            row = connection.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return b"" if row[0] is None else bytes(row[0])

    def delete(self, key: str, *, recurse: bool = False) -> int:
        """Delete ``key`` (or every key under it with ``recurse``); returns how many."""
        with self._open() as connection:
            if recurse:
                return self._write(connection, "DELETE FROM kv WHERE key >= :a0 AND key < :a1",
                                   _bounds(key))
            return self._write(connection, "DELETE FROM kv WHERE key = :a0", (key,))

    def list(self, prefix: str = "") -> Listing:
        with self._open() as connection:
            return _read(connection, prefix)
