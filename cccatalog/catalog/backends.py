"""The engine abstraction under the state store: a `Database` hands out `Conn`s, a `Conn` runs SQL
through its engine's `Dialect`, and every row comes back as a named tuple (`row.slug`), the same
shape on both engines.

The engines themselves live beside this module: `sqlite_engine` (one SQLite file, in memory, or a
file read without writing) and `postgres_engine` (a PostgreSQL database shared by replicas, psycopg 3,
the `postgres` extra). Each knows how to open itself; `store.Store.open` picks one.

Both run the same SQL, written once with `?` placeholders, the same schema and the same migrations.
What differs lives in the dialects: how a statement is handed to the driver, where the schema version
is kept, how the migration lock is taken, how tables and columns are listed.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache, partial
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

MIGRATION_LOCK = "migrate"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn:
    """A connection as the store and the migrations use it: SQL with `?` placeholders, rows as named
    tuples, and the dialect of its engine (`conn.dialect`)."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        return self.dialect.execute(self.raw, sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            self.dialect.executemany(self.raw, sql, rows)

    @property
    def in_transaction(self) -> bool:
        return self.dialect.in_transaction(self.raw)


@lru_cache(maxsize=256)
def row_maker(names: tuple[str, ...]) -> Callable[[Iterable[Any]], Any]:
    """What makes a row of a result with these columns: a named tuple, read by name (`row.slug`) or
    position (cached: a query's rows share one type). A column the SQL did not name (`count(*)`)
    gets a name only by position; the store names every column it reads by name."""
    row: Any = namedtuple("Row", list(names), rename=True)  # type: ignore[misc]  # names known at run time only
    # tuple.__new__ itself, not namedtuple's `_make` (a Python function): a C call per row
    return partial(tuple.__new__, row)


class Dialect(ABC):
    """What the SQL of the two engines does differently."""

    name: str
    # what the state is called in messages: a state "file" or a state "database"
    noun: str

    @abstractmethod
    def execute(self, raw: Any, sql: str, params: tuple[object, ...]) -> Cursor: ...

    @abstractmethod
    def executemany(self, raw: Any, sql: str, rows: Sequence[Sequence[object]]) -> None: ...

    @abstractmethod
    def in_transaction(self, raw: Any) -> bool: ...

    @abstractmethod
    def schema_version(self, conn: Conn) -> int:
        """The schema version, read without writing anything (0 for a database cccatalog never wrote)."""

    @abstractmethod
    def set_schema_version(self, conn: Conn, version: int) -> None: ...

    @abstractmethod
    def begin_migration(self, conn: Conn) -> None:
        """Start the one transaction that migrates, holding the lock every other migrator waits for."""

    @abstractmethod
    def tables(self, conn: Conn) -> set[str]: ...

    @abstractmethod
    def columns(self, conn: Conn, table: str) -> frozenset[str]: ...


def lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for a cccatalog lock name."""
    digest = hashlib.sha256(f"cccatalog:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Database(ABC):
    """Connections to one state database, handed to a function at a time (`read`, `write`)."""

    dialect: Dialect
    # shown in messages and logs: the file, or the URL with its credentials masked
    location: str
    # True when other hosts use the same database (its locks are then the database's own)
    shared: bool = False

    @abstractmethod
    def read(self, what: str, fn: Callable[[Conn], T]) -> T:
        """`fn` on a connection outside any explicit transaction; errors become StateError."""

    @abstractmethod
    def write(self, what: str, fn: Callable[[Conn], T]) -> T:
        """`fn` inside one transaction, rolled back on any error; errors become StateError."""

    @abstractmethod
    def migrate_with(self, fn: Callable[[Conn], T]) -> T:
        """`fn` on a connection in autocommit mode, for the migration (which runs its own transaction)."""

    @abstractmethod
    def close(self) -> None: ...

    def unreachable(self) -> str | None:
        """Why the database cannot be reached now, or None."""
        return None
