"""A database as the predecessor (cc-catalog-svc) leaves it: its schema exactly as SQLAlchemy 2's
`create_all` emits it for SQLite (statement text included) and for PostgreSQL, its engine's pragmas,
and rows written the way its catalog poll and git sync write them (naive UTC times, booleans as 0/1 in
SQLite and as booleans in PostgreSQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

# The statements SQLAlchemy sends for the predecessor's models, in its order.
SCHEMA: tuple[str, ...] = (
    "\nCREATE TABLE codecollections (\n\tid INTEGER NOT NULL, \n\tslug VARCHAR(200) NOT NULL, \n\t"
    "name VARCHAR(500), \n\tgit_url VARCHAR(1000), \n\timage_registry VARCHAR(500), \n\t"
    "default_ref VARCHAR(200) NOT NULL, \n\tvisibility VARCHAR(20) NOT NULL, \n\t"
    "source_name VARCHAR(100), \n\tlast_synced DATETIME, \n\tlast_sync_error TEXT, \n\t"
    "git_head_commit VARCHAR(80), \n\tgit_last_synced DATETIME, \n\tgit_last_sync_error TEXT, \n\t"
    "created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, \n\t"
    "updated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, \n\tPRIMARY KEY (id)\n)\n\n",
    "CREATE UNIQUE INDEX ix_codecollections_slug ON codecollections (slug)",
    "\nCREATE TABLE destinations (\n\tid INTEGER NOT NULL, \n\tname VARCHAR(200) NOT NULL, \n\t"
    "type VARCHAR(50) NOT NULL, \n\tconfig_json JSON NOT NULL, \n\tenabled BOOLEAN NOT NULL, \n\t"
    "last_synced DATETIME, \n\tlast_sync_error TEXT, \n\t"
    "created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, \n\t"
    "updated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, \n\tPRIMARY KEY (id)\n)\n\n",
    "CREATE UNIQUE INDEX ix_destinations_name ON destinations (name)",
    "\nCREATE TABLE image_refs (\n\tid INTEGER NOT NULL, \n\tcc_id INTEGER NOT NULL, \n\t"
    "ref_name VARCHAR(500) NOT NULL, \n\tref_type VARCHAR(20) NOT NULL, \n\t"
    "image_registry VARCHAR(500), \n\timage_tag VARCHAR(500) NOT NULL, \n\t"
    "image_digest VARCHAR(120), \n\tcommit_hash VARCHAR(80), \n\trt_revision VARCHAR(80), \n\t"
    "image_built_at DATETIME, \n\tis_latest BOOLEAN NOT NULL, \n\tis_stable BOOLEAN NOT NULL, \n\t"
    "is_prerelease BOOLEAN NOT NULL, \n\tis_active BOOLEAN NOT NULL, \n\tsynced_at DATETIME, \n\t"
    "created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, \n\t"
    "updated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, \n\tPRIMARY KEY (id), \n\t"
    "CONSTRAINT uq_image_refs_cc_ref UNIQUE (cc_id, ref_name), \n\t"
    "FOREIGN KEY(cc_id) REFERENCES codecollections (id) ON DELETE CASCADE\n)\n\n",
    "CREATE INDEX ix_image_refs_cc_id ON image_refs (cc_id)",
    "CREATE INDEX ix_image_refs_cc_active ON image_refs (cc_id, is_active)",
    "CREATE INDEX ix_image_refs_image_tag ON image_refs (cc_id, image_tag)",
    "\nCREATE TABLE mirror_targets (\n\tid INTEGER NOT NULL, \n\tcc_id INTEGER NOT NULL, \n\t"
    "destination_id INTEGER NOT NULL, \n\tsource_image_tag VARCHAR(500) NOT NULL, \n\t"
    "target_image_ref VARCHAR(1000) NOT NULL, \n\ttarget_digest VARCHAR(120), \n\t"
    "mirrored_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, \n\tPRIMARY KEY (id), \n\t"
    "CONSTRAINT uq_mirror_targets_cc_dest_tag UNIQUE (cc_id, destination_id, source_image_tag), \n\t"
    "FOREIGN KEY(cc_id) REFERENCES codecollections (id) ON DELETE CASCADE, \n\t"
    "FOREIGN KEY(destination_id) REFERENCES destinations (id) ON DELETE CASCADE\n)\n\n",
    "CREATE INDEX ix_mirror_targets_destination_id ON mirror_targets (destination_id)",
    "CREATE INDEX ix_mirror_targets_cc_id ON mirror_targets (cc_id)",
    "\nCREATE TABLE mirror_jobs (\n\tid INTEGER NOT NULL, \n\tcc_id INTEGER NOT NULL, \n\t"
    "destination_id INTEGER NOT NULL, \n\tsource_image_ref VARCHAR(1000) NOT NULL, \n\t"
    "target_image_ref VARCHAR(1000) NOT NULL, \n\tstatus VARCHAR(20) NOT NULL, \n\t"
    "attempts INTEGER NOT NULL, \n\tmax_attempts INTEGER NOT NULL, \n\tlast_error TEXT, \n\t"
    "log_text TEXT, \n\tcreated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, \n\t"
    "started_at DATETIME, \n\tfinished_at DATETIME, \n\tPRIMARY KEY (id), \n\t"
    "FOREIGN KEY(cc_id) REFERENCES codecollections (id) ON DELETE CASCADE, \n\t"
    "FOREIGN KEY(destination_id) REFERENCES destinations (id) ON DELETE CASCADE\n)\n\n",
    "CREATE INDEX ix_mirror_jobs_status ON mirror_jobs (status)",
    "CREATE INDEX ix_mirror_jobs_cc_id ON mirror_jobs (cc_id)",
    "CREATE INDEX ix_mirror_jobs_status_created ON mirror_jobs (status, created_at)",
    "CREATE INDEX ix_mirror_jobs_destination_id ON mirror_jobs (destination_id)",
)

# Its git columns came later (added by ALTER TABLE on upgrade): a database from before has none.
GIT_COLUMNS = "git_head_commit VARCHAR(80), \n\tgit_last_synced DATETIME, \n\tgit_last_sync_error TEXT, \n\t"
SCHEMA_BEFORE_GIT = tuple(s.replace(GIT_COLUMNS, "") for s in SCHEMA)

HEAD_CLI = "e2f76a4" + "0" * 33
LEAKED = "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX2xlYWtlZGxlYWtlZGxlYWtlZGxlYWtlZDAw"  # x-access-token:ghp_...

# (slug, name, git_url, image_registry, default_ref, visibility, source_name, last_synced,
#  last_sync_error, git_head_commit, git_last_synced, git_last_sync_error, created_at, updated_at)
COLLECTIONS: tuple[tuple[object, ...], ...] = (
    (
        "rw-cli-codecollection",
        "RunWhen CLI CodeCollection",
        "https://github.com/runwhen-contrib/rw-cli-codecollection",
        "ghcr.io/runwhen-contrib/rw-cli-codecollection",
        "main",
        "public",
        "ghcr-runwhen-contrib",
        "2026-05-21 16:10:01.123456",
        None,
        HEAD_CLI,
        "2026-05-21 16:00:02.500000",
        None,
        "2026-05-01 09:00:00",
        "2026-05-21 16:10:01.123456",
    ),
    (
        "rw-public-codecollection",
        "rw-public-codecollection",
        "https://github.com/runwhen-contrib/rw-public-codecollection",
        "ghcr.io/runwhen-contrib/rw-public-codecollection",
        "main",
        "public",
        "ghcr-runwhen-contrib",
        "2026-05-20 08:00:00.000000",
        "registry answered 503 Service Unavailable",
        None,
        None,
        "git -c http.extraHeader=Authorization: " + LEAKED + " fetch failed: exit 128",
        "2026-05-01 09:00:00",
        "2026-05-21 16:10:01.654321",
    ),
    (
        "ss-rw-cli-codecollection",
        "Fork of rw-cli-codecollection",
        "https://github.com/stewartshea/rw-cli-codecollection",
        "ghcr.io/stewartshea/rw-cli-codecollection",
        "develop",
        "hidden",
        "ghcr-stewartshea",
        None,
        None,
        None,
        None,
        None,
        "2026-05-02 10:30:00",
        "2026-05-02 10:30:00",
    ),
)

# (slug, ref_name, ref_type, image_registry, image_tag, image_digest, commit_hash, rt_revision,
#  image_built_at, is_latest, is_stable, is_prerelease, is_active, synced_at)
REGISTRY = "ghcr.io/runwhen-contrib/rw-cli-codecollection"
REFS: tuple[tuple[object, ...], ...] = (
    (
        "rw-cli-codecollection",
        "main",
        "branch",
        REGISTRY,
        "main-10792f4-6e4bc81",
        "sha256:" + "a" * 64,
        "10792f4",
        "6e4bc81",
        "2026-05-21 15:55:00.000000",
        1,
        0,
        1,
        1,
        "2026-05-21 16:10:01.123456",
    ),
    (
        "rw-cli-codecollection",
        "v1.2.0",
        "tag",
        REGISTRY,
        "v1.2.0-9988aab-6e4bc81",
        "sha256:" + "b" * 64,
        "9988aab",
        "6e4bc81",
        "2026-05-10 12:00:00.000000",
        0,
        1,
        0,
        1,
        "2026-05-21 16:10:01.123456",
    ),
    (
        "rw-cli-codecollection",
        "v1.2.0-rc1",
        "tag",
        REGISTRY,
        "v1.2.0-rc1-7766aab-6e4bc81",
        None,
        "7766aab",
        "6e4bc81",
        None,
        0,
        0,
        0,
        1,
        "2026-05-21 16:10:01.123456",
    ),
    (
        "rw-cli-codecollection",
        "feature/login",
        "branch",
        REGISTRY,
        "feature-login-5544ccd-6e4bc81",
        None,
        "5544ccd",
        "6e4bc81",
        "2026-05-19 07:30:00.250000",
        0,
        0,
        1,
        1,
        "2026-05-21 16:10:01.123456",
    ),
    (
        "rw-cli-codecollection",
        "pr-42",
        "branch",
        REGISTRY,
        "pr-42-3322eef-6e4bc81",
        None,
        "3322eef",
        "6e4bc81",
        "2026-04-01 00:00:00.000000",
        0,
        0,
        1,
        0,
        "2026-05-01 09:05:00.000000",
    ),
    (
        "rw-public-codecollection",
        "main",
        "branch",
        "ghcr.io/runwhen-contrib/rw-public-codecollection",
        "main-1111111-6e4bc81",
        None,
        "1111111",
        "6e4bc81",
        None,
        1,
        1,
        0,
        1,
        "2026-05-20 08:00:00.000000",
    ),
)


@dataclass(frozen=True)
class PredecessorDb:
    path: Path

    @property
    def target(self) -> Path:
        return self.path

    def connect(self) -> sqlite3.Connection:
        """A connection set up as the predecessor's engine sets up each of its connections."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def schema(self) -> list[tuple[str, str, str | None]]:
        """(type, name, sql) of every predecessor object, as sqlite_master holds them."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'cccatalog_%' "
                "AND name NOT LIKE 'sqlite_autoindex_cccatalog_%' ORDER BY type, name"
            ).fetchall()
        return [(str(t), str(n), s) for t, n, s in rows]

    def dump(self) -> dict[str, list[tuple[object, ...]]]:
        """Every row of every predecessor table."""
        tables = ("codecollections", "image_refs", "destinations", "mirror_targets", "mirror_jobs")
        with self.connect() as conn:
            return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in tables}  # noqa: S608


def make_predecessor_db(
    path: Path,
    *,
    schema: Sequence[str] = SCHEMA,
    collections: Sequence[tuple[object, ...]] = COLLECTIONS,
    refs: Sequence[tuple[object, ...]] = REFS,
) -> PredecessorDb:
    """Create the predecessor's schema at `path` and write `collections` and `refs` as it would."""
    db = PredecessorDb(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = db.connect()
    try:
        conn.execute("BEGIN")
        for statement in schema:
            conn.execute(statement)
        has_git = GIT_COLUMNS in schema[0]
        for row in collections:
            values = row if has_git else row[:9] + row[12:]
            columns = (
                "slug, name, git_url, image_registry, default_ref, visibility, source_name, last_synced, "
                "last_sync_error, "
                + ("git_head_commit, git_last_synced, git_last_sync_error, " if has_git else "")
                + "created_at, updated_at"
            )
            marks = ", ".join("?" * len(values))
            conn.execute(f"INSERT INTO codecollections ({columns}) VALUES ({marks})", values)  # noqa: S608
        for slug, *ref in refs:
            conn.execute(
                "INSERT INTO image_refs (cc_id, ref_name, ref_type, image_registry, image_tag, image_digest, "
                "commit_hash, rt_revision, image_built_at, is_latest, is_stable, is_prerelease, is_active, "
                "synced_at) SELECT id, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM codecollections "
                "WHERE slug = ?",
                (*ref, slug),
            )
        conn.execute(
            "INSERT INTO destinations (name, type, config_json, enabled) VALUES (?, ?, ?, ?)",
            ("acme-jfrog", "jfrog", '{"base_url": "https://acme.jfrog.io"}', 1),
        )
        conn.execute(
            "INSERT INTO mirror_jobs (cc_id, destination_id, source_image_ref, target_image_ref, status, "
            "attempts, max_attempts) VALUES (1, 1, ?, ?, 'done', 1, 3)",
            (
                f"{REGISTRY}:main-10792f4-6e4bc81",
                "acme.jfrog.io/cc/rw-cli-codecollection:main-10792f4-6e4bc81",
            ),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return db


# --- the same database on PostgreSQL (the predecessor's HA "split" mode) -----------------------------


def postgres_schema(schema: Sequence[str] = SCHEMA) -> tuple[str, ...]:
    """The statements SQLAlchemy 2's `create_all` sends for the same models to PostgreSQL: integer
    primary keys become SERIAL, DateTime is TIMESTAMP WITHOUT TIME ZONE, `func.now()` is now();
    BOOLEAN, JSON, VARCHAR and TEXT, indexes and constraints are written as for SQLite."""
    return tuple(
        s.replace("\tid INTEGER NOT NULL", "\tid SERIAL NOT NULL")
        .replace(" DATETIME", " TIMESTAMP WITHOUT TIME ZONE")
        .replace("DEFAULT CURRENT_TIMESTAMP", "DEFAULT now()")
        for s in schema
    )


PG_SCHEMA = postgres_schema()
PG_SCHEMA_BEFORE_GIT = postgres_schema(SCHEMA_BEFORE_GIT)


@dataclass(frozen=True)
class PgPredecessorDb:
    url: str

    @property
    def target(self) -> str:
        return self.url

    def schema(self) -> list[tuple[object, ...]]:
        """Every column, index and constraint of the predecessor's tables, as the catalog shows them."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            columns = conn.execute(
                "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable, "
                "column_default FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name NOT LIKE 'cccatalog_%' ORDER BY table_name, ordinal_position"
            ).fetchall()
            indexes = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
                "AND tablename NOT LIKE 'cccatalog_%' ORDER BY indexname"
            ).fetchall()
            constraints = conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE connamespace = 'public'::regnamespace AND conname NOT LIKE 'cccatalog_%' "
                "ORDER BY conname"
            ).fetchall()
        return [*columns, *indexes, *constraints]

    def dump(self) -> dict[str, list[tuple[object, ...]]]:
        tables = ("codecollections", "image_refs", "destinations", "mirror_targets", "mirror_jobs")
        with psycopg.connect(self.url, autocommit=True) as conn:
            return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in tables}  # noqa: S608


_FLAGS = slice(8, 12)  # is_latest, is_stable, is_prerelease, is_active in a REFS row without its slug


def make_predecessor_pg(
    url: str,
    *,
    schema: Sequence[str] = PG_SCHEMA,
    collections: Sequence[tuple[object, ...]] = COLLECTIONS,
    refs: Sequence[tuple[object, ...]] = REFS,
) -> PgPredecessorDb:
    """Create the predecessor's schema in the (empty) database at `url` and write its rows, as its
    PostgreSQL engine would: booleans as booleans, times as naive UTC timestamps."""
    has_git = "git_head_commit" in schema[0]
    with psycopg.connect(url) as conn:  # one transaction, as create_all and the first poll
        for statement in schema:
            conn.execute(statement)
        for row in collections:
            values = row if has_git else row[:9] + row[12:]
            columns = (
                "slug, name, git_url, image_registry, default_ref, visibility, source_name, last_synced, "
                "last_sync_error, "
                + ("git_head_commit, git_last_synced, git_last_sync_error, " if has_git else "")
                + "created_at, updated_at"
            )
            marks = ", ".join(["%s"] * len(values))
            conn.execute(f"INSERT INTO codecollections ({columns}) VALUES ({marks})", values)  # noqa: S608
        for slug, *ref in refs:
            ref_values = [*ref[:8], *(bool(flag) for flag in ref[_FLAGS]), *ref[12:]]
            conn.execute(
                "INSERT INTO image_refs (cc_id, ref_name, ref_type, image_registry, image_tag, image_digest, "
                "commit_hash, rt_revision, image_built_at, is_latest, is_stable, is_prerelease, is_active, "
                "synced_at) SELECT id, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s "
                "FROM codecollections WHERE slug = %s",
                (*ref_values, slug),
            )
        conn.execute(
            "INSERT INTO destinations (name, type, config_json, enabled) VALUES (%s, %s, %s, %s)",
            ("acme-jfrog", "jfrog", '{"base_url": "https://acme.jfrog.io"}', True),
        )
        conn.execute(
            "INSERT INTO mirror_jobs (cc_id, destination_id, source_image_ref, target_image_ref, status, "
            "attempts, max_attempts) VALUES (1, 1, %s, %s, 'done', 1, 3)",
            (
                f"{REGISTRY}:main-10792f4-6e4bc81",
                "acme.jfrog.io/cc/rw-cli-codecollection:main-10792f4-6e4bc81",
            ),
        )
    return PgPredecessorDb(url)
