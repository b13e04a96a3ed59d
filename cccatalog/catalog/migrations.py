"""Append-only schema migrations of the state file, and the one function that applies them.

Migration N (1-based) brings `PRAGMA user_version` to N. Never edit or reorder a released migration:
add a new one. `migrate` takes the write lock (`BEGIN IMMEDIATE`) before it re-reads the version, so
any number of processes opening the same file at once each see either "nothing to do" or "my turn",
and every migration runs exactly once, in the same transaction as its version bump.

Migrations must use `conn.execute`, one statement at a time: `executescript` commits the open
transaction first, which would break the all-or-nothing upgrade.

A database of the predecessor (cc-catalog-svc: no user_version, its own `codecollections` and
`image_refs` tables) is adopted instead: the first migration would collide with its `image_refs`, so
the current schema is built by replaying every migration on an empty in-memory database and creating
the result beside the predecessor's tables (all of cccatalog's names carry the `cccatalog_` prefix
since migration 3), and the predecessor's rows are carried over — in the same transaction, once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from cccatalog.catalog import adoption
from cccatalog.errors import StateError

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = []
migration = MIGRATIONS.append


def user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def database_path(conn: sqlite3.Connection) -> str:
    """The file behind the connection's main database, for messages."""
    row = conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row and row[2] else "<in-memory state>"


def check_not_newer(conn: sqlite3.Connection) -> int:
    """Return the file's schema version; refuse a file written by a newer cccatalog (read-only check)."""
    found = user_version(conn)
    known = len(MIGRATIONS)
    if found > known:
        raise StateError(
            f"state file {database_path(conn)} was written by a newer cccatalog (schema version {found}; "
            f"this cccatalog knows up to {known}). It was left untouched: upgrade cccatalog, "
            "or point it at another state file."
        )
    return found


# Tables of the predecessor (cc-catalog-svc) that mark its database: such a file is adopted, not refused.
PREDECESSOR_TABLES = frozenset({"codecollections", "image_refs"})


def check_is_state_file(conn: sqlite3.Connection) -> None:
    """Refuse (read-only check) a database that is neither new, nor cccatalog's, nor the predecessor's:
    migrating it would add tables to some other program's file."""
    if user_version(conn) != 0:
        return
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if tables and not tables >= PREDECESSOR_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StateError(
            f"{database_path(conn)} is not a cccatalog state file (it holds other tables: {shown}); "
            "it was left untouched: point state.path at a new file"
        )


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; return the schema version now in the file.

    The connection must be in autocommit mode (`isolation_level=None`): the transaction is explicit.
    """
    if check_not_newer(conn) == len(MIGRATIONS):
        return len(MIGRATIONS)
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated between our first look and taking the lock.
        current = check_not_newer(conn)
        if current == 0 and (found := adoption.detect(conn)) is not None:
            for statement in current_schema():
                conn.execute(statement)
            adoption.carry(conn, found)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS):d}")
        else:
            for number in range(current + 1, len(MIGRATIONS) + 1):
                MIGRATIONS[number - 1](conn)
                conn.execute(f"PRAGMA user_version = {number:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


def current_schema() -> list[str]:
    """The CREATE statements of the latest schema, as the migrations leave it in an empty database:
    tables first, then what depends on them (indexes)."""
    scratch = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(scratch)
        rows = scratch.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type <> 'table', rowid"
        ).fetchall()
    finally:
        scratch.close()
    return [sql for (sql,) in rows]


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE collections (
            slug TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            name TEXT,
            git_url TEXT,
            image_registry TEXT,
            default_ref TEXT NOT NULL,
            visibility TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE git_mirrors (
            slug TEXT PRIMARY KEY,
            upstream_url TEXT,
            head_commit TEXT,
            default_branch TEXT,
            refs_fingerprint TEXT,
            last_action TEXT,
            last_attempt_at TEXT,
            last_success_at TEXT,
            last_error TEXT
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE image_refs (
            slug TEXT NOT NULL,
            ref TEXT NOT NULL,
            ref_type TEXT,
            image_registry TEXT,
            image_tag TEXT,
            image_digest TEXT,
            commit_hash TEXT,
            rt_revision TEXT,
            image_built_at TEXT,
            built_at_source TEXT,
            is_latest INTEGER NOT NULL DEFAULT 0,
            is_prerelease INTEGER NOT NULL DEFAULT 0,
            is_active INTEGER NOT NULL DEFAULT 1,
            synced_at TEXT,
            PRIMARY KEY (slug, ref)
        )
        """
    )


@migration
def m002_image_sync_status(conn: sqlite3.Connection) -> None:
    # When a collection's image refs were last polled, and why the last poll failed: a failed
    # registry keeps the previous refs, so the reason must be recorded somewhere visible.
    conn.execute(
        """
        CREATE TABLE image_syncs (
            slug TEXT PRIMARY KEY,
            attempted_at TEXT,
            succeeded_at TEXT,
            error TEXT
        )
        """
    )


@migration
def m003_prefix_tables(conn: sqlite3.Connection) -> None:
    # The predecessor's database has its own `image_refs`; with a prefix on every name, cccatalog's
    # tables live beside its tables in one file, and a rollback to the predecessor finds its own intact.
    for table in ("collections", "git_mirrors", "image_refs", "image_syncs"):
        conn.execute(f"ALTER TABLE {table} RENAME TO cccatalog_{table}")


@migration
def m004_image_ref_stable_flag(conn: sqlite3.Connection) -> None:
    # The row `stable` points at is decided when refs are written: a static file names it
    # (stable_ref), the predecessor's rows carry it, and is_prerelease depends on it.
    conn.execute("ALTER TABLE cccatalog_image_refs ADD COLUMN is_stable INTEGER NOT NULL DEFAULT 0")
