"""Catalog views: the predecessor's JSON shapes, built from config + state + the servable rule.

`git_url` is the mirror's public URL exactly when the mirror is servable (the same test the git
route uses), and the upstream URL otherwise. Timestamps are RFC 3339 UTC with `Z`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cccatalog.catalog.models import CatalogPointers, ImageRefRecord, MirrorStatus
from cccatalog.catalog.pointers import pointers
from cccatalog.config import CodeCollection, Config
from cccatalog.redact import strip_url_credentials
from cccatalog.timestamps import rfc3339

Servable = Callable[[str], bool]


def public_url(config: Config, slug: str) -> str | None:
    base = config.git.public_base_url
    return f"{base}/{slug}.git" if base else None


def git_url(config: Config, cc: CodeCollection, servable: Servable) -> str | None:
    """The clone URL clients should use: the mirror when it is servable and has a public URL."""
    mirror = public_url(config, cc.slug)
    if mirror and servable(cc.slug):
        return mirror
    return strip_url_credentials(cc.git_url) if cc.git_url else None


def image_ref(r: ImageRefRecord) -> dict[str, Any]:
    return {
        "ref": r.ref,
        "ref_type": r.ref_type,
        "image_registry": r.image_registry,
        "image_tag": r.image_tag,
        "image_digest": r.image_digest,
        "commit_hash": r.commit_hash,
        "rt_revision": r.rt_revision,
        "image_built_at": rfc3339(r.image_built_at),
        "built_at_source": r.built_at_source,
        "is_latest": r.is_latest,
        "is_prerelease": r.is_prerelease,
        "is_active": r.is_active,
        "synced_at": rfc3339(r.synced_at),
    }


def catalog_entry(
    config: Config,
    cc: CodeCollection,
    refs: Sequence[ImageRefRecord],
    last_synced: datetime | None,
    servable: Servable,
) -> dict[str, Any]:
    latest, stable = pointers(refs)
    row = CatalogPointers(
        cc.slug,
        any(r.is_active and r.image_tag for r in refs),
        latest.image_tag if latest else None,
        latest.image_registry if latest else None,
        stable.image_tag if stable else None,
        stable.image_registry if stable else None,
        last_synced,
    )
    return pointers_entry(config, cc, row, servable)


def pointers_entry(
    config: Config, cc: CodeCollection, row: CatalogPointers, servable: Servable
) -> dict[str, Any]:
    """A collection as the catalog list shows it, from its pointers as the store keeps them."""
    shown_registry = row.latest_registry if row.latest_tag else row.stable_registry
    shown = row.latest_tag or row.stable_tag
    return {
        "slug": cc.slug,
        "name": cc.display_name,
        "git_url": git_url(config, cc, servable),
        "visibility": cc.visibility,
        "latest_image_tag": row.latest_tag,
        "stable_image_tag": row.stable_tag,
        "image_registry": shown_registry if shown else cc.image_registry,
        "last_synced": rfc3339(row.last_synced),
    }


def resolve_payload(cc: CodeCollection, requested: str, r: ImageRefRecord) -> dict[str, Any]:
    """The predecessor's resolve answer. `destination`, `target_image_ref` and `target_digest` are
    filled in by the API when a destination is asked for (and holds the build)."""
    return {
        "slug": cc.slug,
        "requested": requested,
        "image_tag": r.image_tag,
        "image_registry": r.image_registry,
        "image_digest": r.image_digest,
        "commit_hash": r.commit_hash,
        "rt_revision": r.rt_revision,
        "destination": None,
        "target_image_ref": None,
        "target_digest": None,
    }


def repo_status(
    config: Config,
    cc: CodeCollection,
    status: MirrorStatus | None,
    servable: Servable,
    *,
    local_path: Path | None = None,
    replica: str = "",
) -> dict[str, Any]:
    """A mirror's status as this replica sees it: `present` and `local_path` (given for the detail
    view) are its own disk's, `replica` says whose (replicas each have a disk, unless they share a
    volume)."""
    success = status.last_success_at if status else None
    payload: dict[str, Any] = {
        "slug": cc.slug,
        "upstream_url": strip_url_credentials(cc.git_url) if cc.git_url else None,
        "public_url": public_url(config, cc.slug),
        "present": servable(cc.slug),
        "head_commit": status.head_commit if status else None,
        "default_branch": status.default_branch if status else None,
        "last_synced": rfc3339(success),
        "last_sync_error": status.last_error if status else None,
        "freshness_seconds": round(time.time() - success.timestamp()) if success else None,
        "replica": replica or None,
    }
    if local_path is not None:
        payload["local_path"] = str(local_path)
    return payload
