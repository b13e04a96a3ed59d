"""Plain records that cross the state boundary: what the Store returns and accepts, and the one text
form times are stored in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cccatalog.timestamps import parse_rfc3339


def to_db_time(value: datetime) -> str:
    """Aware datetime -> `2026-11-25T21:00:00.123456Z` (fixed width, so text order is time order)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime given to the state store; pass a timezone-aware one")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_db_time(value: str | None) -> datetime | None:
    return None if value is None else parse_rfc3339(value)


@dataclass(frozen=True, slots=True)
class MirrorStatus:
    """What the state file knows about one git mirror. Times are timezone-aware UTC."""

    slug: str
    upstream_url: str | None = None
    head_commit: str | None = None
    default_branch: str | None = None
    refs_fingerprint: str | None = None
    last_action: str | None = None
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class CollectionRecord:
    """A CodeCollection as last written to the state file from config. `updated_at` is aware UTC."""

    slug: str
    source: str
    name: str | None
    git_url: str | None
    image_registry: str | None
    default_ref: str
    visibility: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ImageRefRecord:
    """The newest build of one ref of one collection (the predecessor's ImageRef, plus where
    `image_built_at` came from)."""

    slug: str
    ref: str
    ref_type: str
    image_registry: str | None
    image_tag: str
    image_digest: str | None
    commit_hash: str | None
    rt_revision: str | None
    image_built_at: datetime | None
    built_at_source: str | None
    is_latest: bool
    is_prerelease: bool
    is_active: bool = True
    synced_at: datetime | None = None
    # the row `stable` points at, decided when the refs are written (rows written before this flag
    # existed have it false everywhere, and stable is then derived when read)
    is_stable: bool = False


@dataclass(frozen=True, slots=True)
class ImageSyncStatus:
    """The last image poll of a collection: when, and what went wrong (redacted) if it failed."""

    slug: str
    attempted_at: datetime | None
    succeeded_at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class CatalogPointers:
    """What the catalog list shows of one collection's images: its latest and stable builds (kept
    with the rows when they are written) and its last successful poll."""

    slug: str
    has_image: bool = False
    latest_tag: str | None = None
    latest_registry: str | None = None
    stable_tag: str | None = None
    stable_registry: str | None = None
    last_synced: datetime | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """An admin or scheduled sync job as the database keeps it, for any replica to answer about."""

    id: str
    kind: str
    state: str  # running | succeeded | failed
    replica: str | None
    started_at: datetime
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    # the run lock it holds while running (`RunLock.name`): free while the row says running means
    # its replica stopped
    lock: str | None = None


@dataclass(frozen=True, slots=True)
class NewMirrorJob:
    """A copy to ask for: one build of one collection to one destination."""

    destination: str
    cc_slug: str
    source_image_ref: str
    source_image_tag: str
    target_image_ref: str


@dataclass(frozen=True, slots=True)
class MirrorJobRecord:
    """A mirror job as the predecessor's API shows it (`MirrorJobView`, `log_text` for the detail)."""

    id: int
    cc_slug: str
    destination: str
    source_image_ref: str
    source_image_tag: str
    target_image_ref: str
    status: str  # pending | running | done | failed
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    log_text: str | None = None


@dataclass(frozen=True, slots=True)
class DestinationRecord:
    """What the state knows of one destination: its last mirror and how many tags it holds."""

    name: str
    type: str
    enabled: bool
    last_synced: datetime | None
    last_sync_error: str | None
    mirrored_tag_count: int


@dataclass(frozen=True, slots=True)
class MirrorTargetRecord:
    """One build a destination holds (a mirror that succeeded)."""

    destination: str
    slug: str
    source_image_tag: str
    target_image_ref: str
    target_digest: str | None
    mirrored_at: datetime
