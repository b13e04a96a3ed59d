"""The SQLite engine of the state store: one connection to a file (WAL mode, so `serve` reads while
`sync` writes), to a database in memory (serve's fallback when the state file is unusable), or to a
file read without writing anything (`cccatalog status`), shared by every thread behind a lock that
keeps transactions whole.

Opening never migrates (the store does, through `migrate_with`), and never writes a file a newer
cccatalog or another program made: the caller's `check` runs before the switch to WAL.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cccatalog.catalog.backends import Conn, Cursor, Database, Dialect, T, row_maker
from cccatalog.errors import StateError

MEMORY = ":memory:"


class _NamedRows:
    """A result read as named rows: its columns' names are looked up once, and its rows are made
    by C calls alone (`map`), not by a Python row factory called per row."""

    __slots__ = ("_cursor", "_make")

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor
        self._make = row_maker(tuple(column[0] for column in cursor.description))

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        return None if row is None else self._make(row)

    def fetchall(self) -> list[Any]:
        return list(map(self._make, self._cursor.fetchall()))


class SqliteDialect(Dialect):
    name = "sqlite"
    noun = "file"

    def execute(self, raw: Any, sql: str, params: tuple[object, ...]) -> Cursor:
        cursor = raw.execute(sql, params)
        result: Cursor = _NamedRows(cursor) if cursor.description else cursor
        return result

    def executemany(self, raw: Any, sql: str, rows: Sequence[Sequence[object]]) -> None:
        raw.executemany(sql, rows)

    def in_transaction(self, raw: Any) -> bool:
        return bool(raw.in_transaction)

    def schema_version(self, conn: Conn) -> int:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        return version

    def set_schema_version(self, conn: Conn, version: int) -> None:
        conn.execute(f"PRAGMA user_version = {int(version):d}")

    def begin_migration(self, conn: Conn) -> None:
        conn.execute("BEGIN IMMEDIATE")  # the write lock, before the version is read again

    def tables(self, conn: Conn) -> set[str]:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        return {str(row.name) for row in rows}

    def columns(self, conn: Conn, table: str) -> frozenset[str]:
        return frozenset(str(row.name) for row in conn.execute(f"PRAGMA table_info({table})").fetchall())


class SqliteDatabase(Database):
    """One SQLite connection shared by every thread; a thread lock keeps transactions whole. Made by
    `open_file`, `open_memory` or `open_read_only`."""

    dialect = SqliteDialect()

    def __init__(self, raw: sqlite3.Connection, path: Path) -> None:
        self.raw = raw
        self.path = path
        self.location = str(path)
        self.conn = Conn(raw, self.dialect)
        self._lock = threading.Lock()

    @classmethod
    def open_file(
        cls, path: Path, *, busy_timeout_s: float, check: Callable[[Conn], None] = lambda _: None
    ) -> SqliteDatabase:
        """The file at `path` (created, with its directory, if missing) in WAL mode. `check` reads the
        file before anything writes to it, and may refuse it."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the directory for state file {path}: {exc.strerror or exc}; "
                "check that the parent path is a writable directory"
            ) from None
        try:
            raw = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise sqlite_error(str(path), "open", exc) from None
        db = cls(raw, path)
        try:
            raw.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000):d}")
            # Before anything writes: a newer cccatalog's file must stay byte-for-byte untouched.
            check(db.conn)
            _enable_wal(raw, deadline=time.monotonic() + busy_timeout_s)
            raw.execute("PRAGMA synchronous = NORMAL")
            raw.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raw.close()
            raise sqlite_error(str(path), "open", exc) from None
        except BaseException:
            raw.close()
            raise
        return db

    @classmethod
    def open_memory(cls) -> SqliteDatabase:
        """A database that lives only in this process."""
        return cls(sqlite3.connect(MEMORY, isolation_level=None, check_same_thread=False), Path(MEMORY))

    @classmethod
    def open_read_only(cls, path: Path) -> SqliteDatabase:
        """The existing file at `path`, read without creating or writing anything: not even the
        -wal/-shm files a read-only connection makes when they are missing. With both present (a
        writer has the file open) they are used, so its latest commits are seen; without them the file
        holds every commit and is read as it is, immutable."""
        sidecars = Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
        uri = f"{path.absolute().as_uri()}?mode=ro" + ("" if sidecars else "&immutable=1")
        try:
            raw = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5)
            raw.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise sqlite_error(str(path), "open", exc) from None
        return cls(raw, path)

    def read(self, what: str, fn: Callable[[Conn], T]) -> T:
        with self._lock:
            try:
                return fn(self.conn)
            except sqlite3.Error as exc:
                raise sqlite_error(self.location, what, exc) from None

    def write(self, what: str, fn: Callable[[Conn], T]) -> T:
        with self._lock:
            try:
                self.raw.execute("BEGIN IMMEDIATE")  # the write lock up front, not at the first write
                try:
                    result = fn(self.conn)
                    self.raw.execute("COMMIT")
                except BaseException:
                    # Some errors (disk full, I/O) already ended the transaction.
                    if self.raw.in_transaction:
                        self.raw.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise sqlite_error(self.location, what, exc) from None
        return result

    def migrate_with(self, fn: Callable[[Conn], T]) -> T:
        with self._lock:
            try:
                return fn(self.conn)
            except sqlite3.Error as exc:
                raise sqlite_error(self.location, "open", exc) from None

    def close(self) -> None:
        with self._lock:
            self.raw.close()


def _enable_wal(conn: sqlite3.Connection, *, deadline: float) -> None:
    """Switch to WAL, retrying: the switch needs an exclusive lock and may fail fast with SQLITE_BUSY."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    while True:
        try:
            # On a filesystem without shared memory (NFS) this keeps the rollback journal: still correct.
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def is_busy(exc: BaseException) -> bool:
    # Errors raised by the sqlite3 module itself (e.g. "closed database") carry no SQLite code.
    return bool((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_BUSY)


def sqlite_error(location: str, what: str, exc: BaseException) -> StateError:
    if is_busy(exc):
        hint = "another process kept it locked for longer than the busy timeout; try again"
    else:
        hint = "is the directory writable, the disk not full, and the file a cccatalog state file?"
    return StateError(f"cannot {what} state file {location}: {exc}; {hint}")
