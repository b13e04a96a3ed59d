"""Plain records that cross the state boundary: what the Store returns and accepts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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


@dataclass(frozen=True, slots=True)
class ImageSyncStatus:
    """The last image poll of a collection: when, and what went wrong (redacted) if it failed."""

    slug: str
    attempted_at: datetime | None
    succeeded_at: datetime | None
    error: str | None
