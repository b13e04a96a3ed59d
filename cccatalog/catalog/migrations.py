"""Append-only schema migrations of the state database, and the one function that applies them.

Migration N (1-based) brings the schema version to N (`PRAGMA user_version` in an SQLite file, the
table `cccatalog_schema` in PostgreSQL). Never edit or reorder a released migration: add a new one.
`migrate` takes the migration lock (`BEGIN IMMEDIATE`, or `pg_advisory_xact_lock`) before it re-reads
the version, so any number of processes opening the same database at once each see either "nothing
to do" or "my turn", and every migration runs exactly once, in the same transaction as its version
bump (PostgreSQL's DDL is transactional too).

Migrations run on both engines, so they use SQL both speak (TEXT and INTEGER columns, `?`
placeholders, `INSERT ... ON CONFLICT`), through `conn.execute`, one statement at a time:
`executescript` would commit the open transaction first and break the all-or-nothing upgrade.

A database of the predecessor (cc-catalog-svc: no schema version, its own `codecollections` and
`image_refs` tables) is adopted instead: the first migration would collide with its `image_refs`, so
the current schema is built by replaying every migration on an empty in-memory SQLite database and
creating the result beside the predecessor's tables (all of cccatalog's names carry the `cccatalog_`
prefix since migration 3; the statements are plain enough for PostgreSQL), and the predecessor's rows
are carried over — in the same transaction, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cccatalog.catalog import adoption
from cccatalog.catalog.backends import Conn
from cccatalog.catalog.pointers import has_image, pointers
from cccatalog.errors import StateError

Migration = Callable[[Conn], None]

MIGRATIONS: list[Migration] = []
migration = MIGRATIONS.append


def user_version(conn: Conn) -> int:
    """The schema version of the database behind `conn`, read without writing anything."""
    return conn.dialect.schema_version(conn)


def check_not_newer(conn: Conn, location: str) -> int:
    """Return the database's schema version; refuse one written by a newer cccatalog (read-only check)."""
    found = user_version(conn)
    known = len(MIGRATIONS)
    if found > known:
        raise StateError(
            f"state database {location} was written by a newer cccatalog (schema version {found}; "
            f"this cccatalog knows up to {known}). It was left untouched: upgrade cccatalog, "
            "or point it at another state database."
        )
    return found


# Tables of the predecessor (cc-catalog-svc) that mark its database: such a file is adopted, not refused.
PREDECESSOR_TABLES = frozenset({"codecollections", "image_refs"})


def check_is_state_file(conn: Conn, location: str) -> None:
    """Refuse (read-only check) a database that is neither new, nor cccatalog's, nor the predecessor's:
    migrating it would add tables to some other program's database."""
    if user_version(conn) != 0:
        return
    tables = conn.dialect.tables(conn)
    if tables and not tables >= PREDECESSOR_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        what = conn.dialect.noun
        setting = "state.path at a new file" if what == "file" else "state.url at a database of its own"
        raise StateError(
            f"{location} is not a cccatalog state {what} (it holds other tables: {shown}); "
            f"it was left untouched: point {setting}"
        )


def migrate(conn: Conn, location: str = "<in-memory state>") -> int:
    """Apply pending migrations; return the schema version now in the database.

    The connection must be in autocommit mode: the transaction is explicit.
    """
    if check_not_newer(conn, location) == len(MIGRATIONS):
        return len(MIGRATIONS)
    conn.dialect.begin_migration(conn)
    try:
        # Another process may have migrated between our first look and taking the lock.
        current = check_not_newer(conn, location)
        check_is_state_file(conn, location)
        if current == 0 and (found := adoption.detect(conn)) is not None:
            for statement in current_schema():
                conn.execute(statement)
            adoption.carry(conn, found)
            fill_pointers(conn)
            conn.dialect.set_schema_version(conn, len(MIGRATIONS))
        else:
            for number in range(current + 1, len(MIGRATIONS) + 1):
                MIGRATIONS[number - 1](conn)
                conn.dialect.set_schema_version(conn, number)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


def current_schema() -> list[str]:
    """The CREATE statements of the latest schema, as the migrations leave it in an empty database:
    tables first, then what depends on them (indexes)."""
    from cccatalog.catalog.sqlite_engine import SqliteDatabase

    scratch = SqliteDatabase.open_memory()
    try:
        migrate(scratch.conn)
        rows = scratch.conn.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type <> 'table', rowid"
        ).fetchall()
    finally:
        scratch.close()
    return [row.sql for row in rows]


@dataclass(frozen=True, slots=True)
class _Ref:
    ref: str
    image_tag: str | None
    is_active: bool
    is_latest: bool
    is_stable: bool


def fill_pointers(conn: Conn) -> None:
    """Write every collection's latest/stable pointers from its refs (after an adoption carried rows
    in, and once for the rows written before the pointers were kept)."""
    by_slug: dict[str, list[_Ref]] = {}
    for row in conn.execute(
        "SELECT slug, ref, image_tag, is_active, is_latest, is_stable FROM cccatalog_image_refs "
        "ORDER BY slug, ref"
    ).fetchall():
        by_slug.setdefault(row.slug, []).append(
            _Ref(row.ref, row.image_tag, bool(row.is_active), bool(row.is_latest), bool(row.is_stable))
        )
    for slug, refs in by_slug.items():
        latest_row, stable_row = pointers(refs)
        conn.execute(
            "INSERT INTO cccatalog_catalog_pointers (slug, latest_ref, stable_ref, has_image) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (slug) DO UPDATE SET latest_ref = excluded.latest_ref, "
            "stable_ref = excluded.stable_ref, has_image = excluded.has_image",
            (
                slug,
                latest_row.ref if latest_row else None,
                stable_row.ref if stable_row else None,
                int(has_image(refs)),
            ),
        )


@migration
def m001_initial(conn: Conn) -> None:
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
def m002_image_sync_status(conn: Conn) -> None:
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
def m003_prefix_tables(conn: Conn) -> None:
    # The predecessor's database has its own `image_refs`; with a prefix on every name, cccatalog's
    # tables live beside its tables in one file, and a rollback to the predecessor finds its own intact.
    for table in ("collections", "git_mirrors", "image_refs", "image_syncs"):
        conn.execute(f"ALTER TABLE {table} RENAME TO cccatalog_{table}")


@migration
def m004_image_ref_stable_flag(conn: Conn) -> None:
    # The row `stable` points at is decided when refs are written: a static file names it
    # (stable_ref), the predecessor's rows carry it, and is_prerelease depends on it.
    conn.execute("ALTER TABLE cccatalog_image_refs ADD COLUMN is_stable INTEGER NOT NULL DEFAULT 0")


@migration
def m005_jobs(conn: Conn) -> None:
    # Admin and scheduled sync jobs as rows: any replica answers GET /api/v1/admin/jobs/{id}, and a
    # job outlives the request (and the replica) that started it.
    conn.execute(
        """
        CREATE TABLE cccatalog_jobs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            replica TEXT,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            result TEXT,
            error TEXT,
            lock TEXT
        )
        """
    )
    conn.execute("CREATE INDEX cccatalog_jobs_started ON cccatalog_jobs (started_at)")


@migration
def m006_catalog_pointers(conn: Conn) -> None:
    # Latest and stable per collection, decided when refs are written: the catalog list reads one
    # row per collection instead of loading and ranking every ref of every collection per request.
    conn.execute(
        """
        CREATE TABLE cccatalog_catalog_pointers (
            slug TEXT PRIMARY KEY,
            latest_ref TEXT,
            stable_ref TEXT,
            has_image INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    fill_pointers(conn)


@migration
def m007_mirror_status_per_volume(conn: Conn) -> None:
    # Replicas on PostgreSQL each have their own mirror volume (or share one): a mirror's status
    # belongs to the volume it describes. Rows written before are kept under the empty volume, which
    # is also the only one an SQLite state has.
    conn.execute(
        """
        CREATE TABLE cccatalog_git_mirrors_v (
            volume TEXT NOT NULL DEFAULT '',
            slug TEXT NOT NULL,
            upstream_url TEXT,
            head_commit TEXT,
            default_branch TEXT,
            refs_fingerprint TEXT,
            last_action TEXT,
            last_attempt_at TEXT,
            last_success_at TEXT,
            last_error TEXT,
            PRIMARY KEY (volume, slug)
        )
        """
    )
    conn.execute(
        "INSERT INTO cccatalog_git_mirrors_v (volume, slug, upstream_url, head_commit, default_branch, "
        "refs_fingerprint, last_action, last_attempt_at, last_success_at, last_error) "
        "SELECT '', slug, upstream_url, head_commit, default_branch, refs_fingerprint, last_action, "
        "last_attempt_at, last_success_at, last_error FROM cccatalog_git_mirrors"
    )
    conn.execute("DROP TABLE cccatalog_git_mirrors")
    conn.execute("ALTER TABLE cccatalog_git_mirrors_v RENAME TO cccatalog_git_mirrors")


@migration
def m008_image_mirroring(conn: Conn) -> None:
    # The predecessor's image mirroring (its destinations, mirror_targets and mirror_jobs), keyed by
    # destination name and slug as the rest of cccatalog's tables are. Job ids are numbers, as the
    # predecessor's API shows them; the one row of cccatalog_mirror_job_ids is locked by whoever adds
    # jobs, so two replicas never hand out the same id (a plain `MAX(id) + 1` would race).
    conn.execute(
        """
        CREATE TABLE cccatalog_destinations (
            name TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            config_json TEXT,
            last_synced TEXT,
            last_sync_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE cccatalog_mirror_targets (
            destination TEXT NOT NULL,
            slug TEXT NOT NULL,
            source_image_tag TEXT NOT NULL,
            target_image_ref TEXT NOT NULL,
            target_digest TEXT,
            mirrored_at TEXT NOT NULL,
            PRIMARY KEY (destination, slug, source_image_tag)
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE cccatalog_mirror_jobs (
            id INTEGER PRIMARY KEY,
            cc_slug TEXT NOT NULL,
            destination TEXT NOT NULL,
            source_image_ref TEXT NOT NULL,
            source_image_tag TEXT NOT NULL,
            target_image_ref TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL DEFAULT 3,
            last_error TEXT,
            log_text TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        )
        """
    )
    conn.execute("CREATE INDEX cccatalog_mirror_jobs_status ON cccatalog_mirror_jobs (status, created_at)")
    conn.execute("CREATE TABLE cccatalog_mirror_job_ids (last_id INTEGER NOT NULL)")
    # A database adopted before this migration still holds the predecessor's mirroring tables; the
    # id counter's one row is written there too (an adoption builds the tables without this migration).
    adoption.carry_mirroring(conn)
