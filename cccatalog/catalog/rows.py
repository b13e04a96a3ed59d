"""Image refs as they travel between sites: one JSON form of a catalog row, and a digest of a catalog.

The digest covers what a client of the catalog can see of each active row (tag, digest, commits,
build time, flags), per collection and ref in a fixed order; not when the row was last polled. Two
catalogs with the same digest answer every catalog request alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.views import image_ref
from cccatalog.errors import UsageError
from cccatalog.timestamps import NaiveTime, parse_rfc3339

_TEXT = ("ref", "ref_type", "image_tag")
_OPTIONAL = ("image_registry", "image_digest", "commit_hash", "rt_revision", "built_at_source")
_FLAGS = ("is_latest", "is_prerelease", "is_stable")


def row_to_json(row: ImageRefRecord) -> dict[str, Any]:
    """A row as an export carries it: the API's ImageRef (`views.image_ref`) without what belongs to
    the site that polled it (`is_active`, `synced_at`), with `is_stable`."""
    data = image_ref(row)
    del data["is_active"], data["synced_at"]
    return {**data, "is_stable": row.is_stable}


def row_from_json(slug: str, data: object, *, where: str) -> ImageRefRecord:
    """A row written by `row_to_json`; UsageError naming `where` when it is not one."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected an object")
    for key in _TEXT:
        if not isinstance(data.get(key), str) or not data[key]:
            raise UsageError(f"{where}.{key}: expected a non-empty string")
    for key in _OPTIONAL:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise UsageError(f"{where}.{key}: expected a string or null")
    for key in _FLAGS:
        if not isinstance(data.get(key), bool):
            raise UsageError(f"{where}.{key}: expected true or false")
    built = data.get("image_built_at")
    try:
        built_at = parse_rfc3339(built, assume_utc=False) if isinstance(built, str) else None
    except NaiveTime:
        raise UsageError(f"{where}.image_built_at: expected a time with a zone") from None
    except (ValueError, OverflowError):
        raise UsageError(f"{where}.image_built_at: expected an RFC 3339 time") from None
    return ImageRefRecord(
        slug=slug,
        ref=data["ref"],
        ref_type=data["ref_type"],
        image_registry=data.get("image_registry"),
        image_tag=data["image_tag"],
        image_digest=data.get("image_digest"),
        commit_hash=data.get("commit_hash"),
        rt_revision=data.get("rt_revision"),
        image_built_at=built_at,
        built_at_source=data.get("built_at_source"),
        is_latest=data["is_latest"],
        is_prerelease=data["is_prerelease"],
        is_stable=data["is_stable"],
    )


def catalog_digest(rows: Mapping[str, Sequence[ImageRefRecord]]) -> str:
    """`sha256:<hex>` over every active row with an image, by collection and ref."""
    canonical = {
        slug: sorted((row_to_json(r) for r in found if r.is_active and r.image_tag), key=lambda r: r["ref"])
        for slug, found in sorted(rows.items())
    }
    canonical = {slug: found for slug, found in canonical.items() if found}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def image_reference(row: ImageRefRecord) -> str | None:
    """`registry/repository:tag`, what `skopeo copy` or Hauler is given; None without a registry."""
    if not row.image_registry or not row.image_tag:
        return None
    return f"{row.image_registry}:{row.image_tag}"
