"""The catalog's state: collections, the image refs polled for each, their latest/stable pointers
(decided in the transaction that writes the refs) and each collection's last poll.

A part of `Store` (its SQL, through the store's `_read` and `_write`). Values always travel as `?`
parameters; lists are sorted in Python, not by ORDER BY (PostgreSQL sorts text by its collation,
SQLite by code point, and answers must not differ).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cccatalog.catalog.backends import Conn, T
from cccatalog.catalog.models import (
    CatalogPointers,
    CollectionRecord,
    ImageRefRecord,
    ImageSyncStatus,
    from_db_time,
    to_db_time,
)
from cccatalog.catalog.pointers import has_image, pointers
from cccatalog.config import CodeCollection
from cccatalog.timestamps import parse_rfc3339

_SELECT_COLLECTIONS = (
    "SELECT slug, source, name, git_url, image_registry, default_ref, visibility, updated_at "
    "FROM cccatalog_collections"
)
_UPSERT_COLLECTION = """
    INSERT INTO cccatalog_collections (slug, source, name, git_url, image_registry, default_ref, visibility,
        updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (slug) DO UPDATE SET source = excluded.source, name = excluded.name,
        git_url = excluded.git_url, image_registry = excluded.image_registry,
        default_ref = excluded.default_ref, visibility = excluded.visibility,
        updated_at = excluded.updated_at
"""
_IMAGE_COLUMNS = (
    "slug, ref, ref_type, image_registry, image_tag, image_digest, commit_hash, rt_revision, "
    "image_built_at, built_at_source, is_latest, is_prerelease, is_active, synced_at, is_stable"
)
_UPSERT_IMAGE_REF = """
    INSERT INTO cccatalog_image_refs (slug, ref, ref_type, image_registry, image_tag, image_digest,
        commit_hash, rt_revision, image_built_at, built_at_source, is_latest, is_prerelease, is_active,
        synced_at, is_stable)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)
    ON CONFLICT (slug, ref) DO UPDATE SET ref_type = excluded.ref_type,
        image_registry = excluded.image_registry, image_tag = excluded.image_tag,
        image_digest = excluded.image_digest, commit_hash = excluded.commit_hash,
        rt_revision = excluded.rt_revision, image_built_at = excluded.image_built_at,
        built_at_source = excluded.built_at_source, is_latest = excluded.is_latest,
        is_prerelease = excluded.is_prerelease, is_active = 1, synced_at = excluded.synced_at,
        is_stable = excluded.is_stable
"""


_UPSERT_POINTERS = """
    INSERT INTO cccatalog_catalog_pointers (slug, latest_ref, stable_ref, has_image) VALUES (?, ?, ?, ?)
    ON CONFLICT (slug) DO UPDATE SET latest_ref = excluded.latest_ref, stable_ref = excluded.stable_ref,
        has_image = excluded.has_image
"""
# One row per collection the state knows images of: the catalog list in one query.
_SELECT_POINTERS = """
    SELECT k.slug, p.has_image, l.image_tag AS latest_tag, l.image_registry AS latest_registry,
        s.image_tag AS stable_tag, s.image_registry AS stable_registry, y.succeeded_at
    FROM (SELECT slug FROM cccatalog_catalog_pointers UNION SELECT slug FROM cccatalog_image_syncs) k
    LEFT JOIN cccatalog_catalog_pointers p ON p.slug = k.slug
    LEFT JOIN cccatalog_image_refs l ON l.slug = p.slug AND l.ref = p.latest_ref
    LEFT JOIN cccatalog_image_refs s ON s.slug = p.slug AND s.ref = p.stable_ref
    LEFT JOIN cccatalog_image_syncs y ON y.slug = k.slug
"""


class CatalogState:
    """The catalog half of `Store`."""

    if TYPE_CHECKING:

        def _read(self, what: str, fn: Callable[[Conn], T], key: Hashable | None = None) -> T: ...

        def _write(self, what: str, fn: Callable[[Conn], T]) -> T: ...

    def upsert_collections(self, collections: Iterable[CodeCollection]) -> None:
        """Insert or update each collection by slug, all in one transaction."""
        now = to_db_time(datetime.now(UTC))
        rows = [
            (c.slug, c.source, c.name, c.git_url, c.image_registry, c.default_ref, c.visibility, now)
            for c in collections
        ]
        self._write("save collections in", lambda conn: conn.executemany(_UPSERT_COLLECTION, rows))

    def list_collections(self) -> list[CollectionRecord]:
        """Every collection in the state, ordered by slug."""
        rows = self._read("read collections from", lambda conn: conn.execute(_SELECT_COLLECTIONS).fetchall())
        return sorted((_collection(row) for row in rows), key=lambda c: c.slug)

    def replace_image_refs(
        self, slug: str, refs: Iterable[ImageRefRecord], *, synced_at: datetime, deactivate_missing: bool
    ) -> tuple[int, int]:
        """Upsert the newest build of each ref; refs not given become inactive when `deactivate_missing`.

        One transaction, so readers never see a collection with no latest; the collection's
        latest/stable pointers are decided in it. Returns (upserted, deactivated).
        """
        when = to_db_time(synced_at)
        rows = [
            (
                slug,
                r.ref,
                r.ref_type,
                r.image_registry,
                r.image_tag,
                r.image_digest,
                r.commit_hash,
                r.rt_revision,
                to_db_time(r.image_built_at) if r.image_built_at else None,
                r.built_at_source,
                int(r.is_latest),
                int(r.is_prerelease),
                when,
                int(r.is_stable),
            )
            for r in refs
        ]

        def write(conn: Conn) -> int:
            if rows:  # an empty (transient) listing must not take the pointers away
                conn.execute(
                    "UPDATE cccatalog_image_refs SET is_latest = 0, is_stable = 0 WHERE slug = ?", (slug,)
                )
            conn.executemany(_UPSERT_IMAGE_REF, rows)
            deactivated = 0
            if deactivate_missing:
                kept = [row[1] for row in rows]
                marks = ",".join("?" * len(kept)) or "NULL"
                cur = conn.execute(
                    f"UPDATE cccatalog_image_refs SET is_active = 0, is_latest = 0, is_stable = 0 "  # noqa: S608
                    f"WHERE slug = ? AND is_active = 1 AND ref NOT IN ({marks})",
                    (slug, *kept),
                )
                deactivated = cur.rowcount
            _refresh_pointers(conn, slug)
            conn.execute(
                "INSERT INTO cccatalog_image_syncs (slug, attempted_at, succeeded_at, error) "
                "VALUES (?, ?, ?, NULL) "
                "ON CONFLICT (slug) DO UPDATE SET attempted_at = excluded.attempted_at, "
                "succeeded_at = excluded.succeeded_at, error = NULL",
                (slug, when, when),
            )
            return deactivated

        return len(rows), self._write("save image refs in", write)

    def record_image_failure(self, slug: str, *, error: str, attempted_at: datetime) -> None:
        """A poll that failed as a whole: the refs stay as they were; `error` must be redacted."""
        self._write(
            "record an image poll failure in",
            lambda conn: conn.execute(
                "INSERT INTO cccatalog_image_syncs (slug, attempted_at, error) VALUES (?, ?, ?) "
                "ON CONFLICT (slug) DO UPDATE SET attempted_at = excluded.attempted_at, "
                "error = excluded.error",
                (slug, to_db_time(attempted_at), error),
            ),
        )

    def list_image_refs(self, slug: str, *, include_inactive: bool = False) -> list[ImageRefRecord]:
        """The refs of a collection, ordered by ref."""
        where = "slug = ?" if include_inactive else "slug = ? AND is_active = 1"
        rows = self._read(
            "read image refs from",
            lambda conn: conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM cccatalog_image_refs WHERE {where}",  # noqa: S608
                (slug,),
            ).fetchall(),
            key=("refs", slug, include_inactive),
        )
        return sorted((_image_ref(row) for row in rows), key=lambda r: r.ref)

    def catalog_pointers(self) -> dict[str, CatalogPointers]:
        """Latest, stable and last poll of every collection the state knows images of, in one query."""
        rows = self._read(
            "read the catalog from",
            lambda conn: conn.execute(_SELECT_POINTERS).fetchall(),
            key=("pointers",),
        )
        return {row.slug: _pointers(row) for row in rows}

    def catalog_pointer(self, slug: str) -> CatalogPointers:
        """Latest, stable and last poll of one collection (empty when the state knows none)."""
        rows = self._read(
            "read the catalog from",
            lambda conn: conn.execute(_SELECT_POINTERS + " WHERE k.slug = ?", (slug,)).fetchall(),
            key=("pointers", slug),
        )
        return _pointers(rows[0]) if rows else CatalogPointers(slug)

    def get_image_sync(self, slug: str) -> ImageSyncStatus | None:
        row = self._read(
            "read image poll status from",
            lambda conn: conn.execute(
                "SELECT slug, attempted_at, succeeded_at, error FROM cccatalog_image_syncs WHERE slug = ?",
                (slug,),
            ).fetchone(),
            key=("image-sync", slug),
        )
        if row is None:
            return None
        return ImageSyncStatus(
            row.slug, from_db_time(row.attempted_at), from_db_time(row.succeeded_at), row.error
        )


def _refresh_pointers(conn: Conn, slug: str) -> None:
    """Decide a collection's latest and stable from its rows, inside the transaction that wrote them."""
    refs = [
        _image_ref(row)
        for row in conn.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM cccatalog_image_refs WHERE slug = ? AND is_active = 1",  # noqa: S608
            (slug,),
        ).fetchall()
    ]
    refs.sort(key=lambda r: r.ref)
    latest, stable = pointers(refs)
    conn.execute(
        _UPSERT_POINTERS,
        (slug, latest.ref if latest else None, stable.ref if stable else None, int(has_image(refs))),
    )


# The builders of the catalog's hot reads pass fields by position, in the record's field order: by
# keyword, building a record costs a quarter more (0.6 us of 2.7 us a row), and the catalog list and
# each collection's refs build thousands.
def _pointers(row: Any) -> CatalogPointers:
    return CatalogPointers(
        row.slug,
        bool(row.has_image),
        row.latest_tag,
        row.latest_registry,
        row.stable_tag,
        row.stable_registry,
        from_db_time(row.succeeded_at),
    )


def _collection(row: Any) -> CollectionRecord:
    return CollectionRecord(
        row.slug,
        row.source,
        row.name,
        row.git_url,
        row.image_registry,
        row.default_ref,
        row.visibility,
        parse_rfc3339(row.updated_at),
    )


def _image_ref(row: Any) -> ImageRefRecord:
    return ImageRefRecord(
        row.slug,
        row.ref,
        row.ref_type,
        row.image_registry,
        row.image_tag,
        row.image_digest,
        row.commit_hash,
        row.rt_revision,
        from_db_time(row.image_built_at),
        row.built_at_source,
        bool(row.is_latest),
        bool(row.is_prerelease),
        bool(row.is_active),
        from_db_time(row.synced_at),
        bool(row.is_stable),
    )
