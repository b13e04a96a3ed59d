"""Adoption of the predecessor's database (cc-catalog-svc): recognise its tables and carry its rows
into cccatalog's, inside the migration transaction that creates them.

The predecessor created its schema with SQLAlchemy `create_all` and added its git columns later with
`ALTER TABLE`, so an older database may lack some columns: whatever is missing is carried as unknown.
Its tables are only read, never changed, so the predecessor can be started again on the same file.
Its times are naive UTC; they are stored here in cccatalog's form (RFC 3339 with `Z`). Error texts it
stored may hold credentials (its git errors carried the Authorization header), so they are redacted.

The statements are plain SQL (SELECT with a JOIN, INSERT ... VALUES) that both engines run; the
columns a table has are listed by the engine's dialect. On PostgreSQL the predecessor's times come
back as datetimes and its flags as booleans, on SQLite as text and 0/1: both are read here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cccatalog.catalog.backends import Conn
from cccatalog.catalog.models import to_db_time
from cccatalog.redact import Redactor, strip_url_credentials
from cccatalog.timestamps import parse_rfc3339

log = logging.getLogger("cccatalog.state")

# Where an adopted row's image_built_at came from, as the API's built_at_source shows it.
BUILT_AT_SOURCE = "cc-catalog-svc"
ADOPTED = "adopted"

_CC_COLUMNS = (
    *("slug", "name", "git_url", "image_registry", "default_ref", "visibility", "source_name"),
    *("last_synced", "last_sync_error", "git_head_commit", "git_last_synced", "git_last_sync_error"),
    *("created_at", "updated_at"),
)
_REF_COLUMNS = (
    *("ref_name", "ref_type", "image_registry", "image_tag", "image_digest", "commit_hash"),
    *("rt_revision", "image_built_at", "is_latest", "is_stable", "is_prerelease", "is_active"),
    "synced_at",
)
# Without these it is not the predecessor's schema (or not one whose rows mean anything).
_CC_REQUIRED = {"id", "slug"}
_REF_REQUIRED = {"cc_id", "ref_name", "image_tag"}


@dataclass(frozen=True, slots=True)
class PredecessorSchema:
    """The columns of the predecessor's two catalog tables that this database has."""

    collection_columns: frozenset[str]
    ref_columns: frozenset[str]


def detect(conn: Conn) -> PredecessorSchema | None:
    """The predecessor's schema when this database holds it, else None."""
    collections = conn.dialect.columns(conn, "codecollections")
    refs = conn.dialect.columns(conn, "image_refs")
    if collections >= _CC_REQUIRED and refs >= _REF_REQUIRED:
        return PredecessorSchema(collections, refs)
    return None


def _time(value: object) -> str | None:
    """A naive-UTC timestamp as SQLAlchemy stores it (text on SQLite, a datetime elsewhere)."""
    if isinstance(value, str):
        try:
            value = parse_rfc3339(value)
        except (ValueError, OverflowError):
            return None
    if not isinstance(value, datetime):
        return None
    return to_db_time(value if value.tzinfo else value.replace(tzinfo=UTC))


def _select(wanted: Sequence[str], present: frozenset[str], prefix: str = "") -> str:
    """Columns in `wanted` order, each named as wanted; those this database lacks come back as NULL."""
    return ", ".join(f"{prefix}{c} AS {c}" if c in present else f"NULL AS {c}" for c in wanted)


def carry(conn: Conn, schema: PredecessorSchema) -> None:
    """Copy the predecessor's collections, image refs, poll status and git status into cccatalog's
    (empty, just created) tables. Runs inside the caller's transaction."""
    redact = Redactor()
    now = to_db_time(datetime.now(UTC))
    select_cc = _select(_CC_COLUMNS, schema.collection_columns)
    ccs = [
        row._asdict()
        for row in conn.execute(f"SELECT {select_cc} FROM codecollections ORDER BY slug").fetchall()  # noqa: S608
    ]
    for cc in ccs:
        _carry_collection(conn, cc, redact, now)
    select_ref = _select(_REF_COLUMNS, schema.ref_columns, "r.")
    refs = conn.execute(
        f"SELECT c.slug AS cc_slug, {select_ref} FROM image_refs r "  # noqa: S608 - column names, no values
        "JOIN codecollections c ON c.id = r.cc_id ORDER BY c.slug, r.ref_name"
    ).fetchall()
    for row in refs:
        _carry_ref(conn, row.cc_slug, row._asdict())
    carry_mirroring(conn)
    log.warning(
        "adopted the cc-catalog-svc database: %d CodeCollections, %d image refs "
        "(its tables are kept as they were, for a rollback)",
        len(ccs),
        len(refs),
    )


def _carry_collection(conn: Conn, cc: dict[str, Any], redact: Redactor, now: str) -> None:
    slug = cc["slug"]
    git_url = strip_url_credentials(cc["git_url"]) if cc["git_url"] else None
    conn.execute(
        "INSERT INTO cccatalog_collections (slug, source, name, git_url, image_registry, default_ref, "
        "visibility, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            slug,
            cc["source_name"] or "",
            cc["name"],
            git_url,
            cc["image_registry"],
            cc["default_ref"] or "main",
            cc["visibility"] or "public",
            _time(cc["updated_at"]) or _time(cc["created_at"]) or now,
        ),
    )
    polled, poll_error = _time(cc["last_synced"]), cc["last_sync_error"]
    if polled or poll_error:
        # The predecessor set last_synced on success and only the error on a failure.
        conn.execute(
            "INSERT INTO cccatalog_image_syncs (slug, attempted_at, succeeded_at, error) VALUES (?, ?, ?, ?)",
            (slug, polled, polled, redact(poll_error) if poll_error else None),
        )
    head, synced, git_error = cc["git_head_commit"], _time(cc["git_last_synced"]), cc["git_last_sync_error"]
    if head or synced or git_error:
        conn.execute(
            "INSERT INTO cccatalog_git_mirrors (slug, upstream_url, head_commit, last_action, "
            "last_attempt_at, last_success_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (slug, git_url, head or None, ADOPTED, synced, synced, redact(git_error) if git_error else None),
        )


def _carry_ref(conn: Conn, slug: str, ref: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO cccatalog_image_refs (slug, ref, ref_type, image_registry, image_tag, image_digest, "
        "commit_hash, rt_revision, image_built_at, built_at_source, is_latest, is_prerelease, "
        "is_active, synced_at, is_stable) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            slug,
            ref["ref_name"],
            ref["ref_type"] or "branch",
            ref["image_registry"],
            ref["image_tag"],
            ref["image_digest"],
            ref["commit_hash"],
            ref["rt_revision"],
            _time(ref["image_built_at"]),
            BUILT_AT_SOURCE if ref["image_built_at"] is not None else None,
            int(bool(ref["is_latest"])),
            _flag(ref["is_prerelease"], default=True),
            _flag(ref["is_active"], default=True),
            _time(ref["synced_at"]),
            int(bool(ref["is_stable"])),
        ),
    )


def _flag(value: object, *, default: bool) -> int:
    return int(default if value is None else bool(value))


_DESTINATION_COLUMNS = (
    "name",
    "type",
    "enabled",
    "config_json",
    "last_synced",
    "last_sync_error",
    "created_at",
    "updated_at",
)
_JOB_COLUMNS = (
    *("id", "source_image_ref", "target_image_ref", "status", "attempts", "max_attempts", "last_error"),
    *("log_text", "created_at", "started_at", "finished_at"),
)


def carry_mirroring(conn: Conn) -> None:
    """Copy the predecessor's image mirroring rows (destinations, mirror_targets, mirror_jobs), when
    its database has them, into cccatalog's mirroring tables. Job ids are kept (the API shows them);
    texts it stored are redacted, as its other errors."""
    tables = conn.dialect.tables(conn)
    if "cccatalog_mirror_job_ids" not in tables:
        return  # a schema from before migration 8, which carries them when it runs
    if {"destinations", "mirror_targets", "mirror_jobs", "codecollections"} <= tables:
        _carry_mirror_rows(conn)
    # The job id counter's one row, going on from the ids carried over.
    conn.execute(
        "INSERT INTO cccatalog_mirror_job_ids (last_id) "
        "SELECT COALESCE(MAX(id), 0) FROM cccatalog_mirror_jobs"
    )


def _carry_mirror_rows(conn: Conn) -> None:
    redact = Redactor()
    now = to_db_time(datetime.now(UTC))
    present = conn.dialect.columns(conn, "destinations")
    for row in conn.execute(f"SELECT {_select(_DESTINATION_COLUMNS, present)} FROM destinations").fetchall():  # noqa: S608
        d = row._asdict()
        config = d["config_json"]
        conn.execute(
            "INSERT INTO cccatalog_destinations (name, type, enabled, config_json, last_synced, "
            "last_sync_error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d["name"],
                d["type"],
                _flag(d["enabled"], default=True),
                config if isinstance(config, str) or config is None else json.dumps(config),
                _time(d["last_synced"]),
                redact(d["last_sync_error"]) if d["last_sync_error"] else None,
                _time(d["created_at"]) or now,
                _time(d["updated_at"]) or now,
            ),
        )
    for target in conn.execute(
        "SELECT c.slug, d.name AS destination, t.source_image_tag, t.target_image_ref, t.target_digest, "
        "t.mirrored_at "
        "FROM mirror_targets t JOIN codecollections c ON c.id = t.cc_id "
        "JOIN destinations d ON d.id = t.destination_id"
    ).fetchall():
        conn.execute(
            "INSERT INTO cccatalog_mirror_targets (destination, slug, source_image_tag, target_image_ref, "
            "target_digest, mirrored_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                target.destination,
                target.slug,
                target.source_image_tag,
                target.target_image_ref,
                target.target_digest,
                _time(target.mirrored_at) or now,
            ),
        )
    columns = _select(_JOB_COLUMNS, conn.dialect.columns(conn, "mirror_jobs"), "j.")
    for row in conn.execute(
        f"SELECT c.slug AS cc_slug, d.name AS destination_name, {columns} FROM mirror_jobs j "  # noqa: S608 - column names, no values
        "JOIN codecollections c ON c.id = j.cc_id JOIN destinations d ON d.id = j.destination_id"
    ).fetchall():
        job = row._asdict()
        source = str(job["source_image_ref"])
        conn.execute(
            "INSERT INTO cccatalog_mirror_jobs (id, cc_slug, destination, source_image_ref, "
            "source_image_tag, target_image_ref, status, attempts, max_attempts, last_error, log_text, "
            "created_at, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                int(job["id"]),
                job["cc_slug"],
                job["destination_name"],
                source,
                str(job["target_image_ref"]).rpartition(":")[2],
                job["target_image_ref"],
                job["status"],
                int(job["attempts"] or 0),
                int(job["max_attempts"] or 3),
                redact(job["last_error"]) if job["last_error"] else None,
                redact(job["log_text"]) if job["log_text"] else None,
                _time(job["created_at"]) or now,
                _time(job["started_at"]),
                _time(job["finished_at"]),
            ),
        )
