"""Which build of each ref is the newest, and why.

Tag order and hex order say nothing about build time, and `Last-Modified` is a cache time on JFrog
remotes, so only the image config's `created` counts (an index is followed to its first platform
manifest that is not an attestation), then the `org.opencontainers.image.created` annotation.
Missing, zero or pre-1980 dates are *unknown* and rank lowest; ties break on `(built_at, tag)`.
Only refs with two or more candidate tags need any metadata at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cccatalog.errors import CCCatalogError, RegistryError
from cccatalog.oci.client import DEFAULT_PER_HOST, INDEX_TYPES, RegistryClient
from cccatalog.oci.reference import Repository
from cccatalog.oci.tags import CanonicalTag, group_by_ref
from cccatalog.timestamps import parse_rfc3339, rfc3339

EARLIEST_PLAUSIBLE = datetime(1980, 1, 1, tzinfo=UTC)
_MIN = datetime.min.replace(tzinfo=UTC)
ANNOTATION_CREATED = "org.opencontainers.image.created"

SOURCE_CONFIG = "config.created"
SOURCE_ANNOTATION = "annotation"
SOURCE_ONLY = "only candidate"
SOURCE_UNKNOWN = "unknown"

# Tags resolved at once: as many as RegistryClient lets through to one host by default.
DEFAULT_WORKERS = DEFAULT_PER_HOST


@dataclass(frozen=True, slots=True)
class Build:
    """One candidate tag of a ref, with what we learned about it."""

    tag: CanonicalTag
    digest: str | None = None
    built_at: datetime | None = None
    source: str = SOURCE_UNKNOWN
    error: str | None = None

    @property
    def rank(self) -> tuple[datetime, str]:
        return (self.built_at or _MIN, self.tag.tag)

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag.tag,
            "digest": self.digest,
            "built_at": rfc3339(self.built_at),
            "built_at_source": self.source,
            "commit": self.tag.commit,
            "rt_revision": self.tag.rt_revision,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class RefResolution:
    ref: str
    newest: Build
    candidates: tuple[Build, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "newest": self.newest.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
        }


def parse_created(value: object) -> datetime | None:
    """RFC 3339 with `Z` or an offset, nanosecond fractions allowed; None for missing, zero or pre-1980."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = parse_rfc3339(value)
    except (ValueError, OverflowError):  # 0001-01-01T00:00:00+02:00 falls off the calendar in UTC
        return None
    return parsed if parsed >= EARLIEST_PLAUSIBLE else None


def pick_newest(builds: Iterable[Build]) -> Build:
    return max(builds, key=lambda b: b.rank)


def _platform_child(index: dict[str, Any]) -> str | None:
    """The first entry of an index that is a real platform image, not an attestation (unknown/unknown)."""
    for entry in index.get("manifests") or []:
        if not isinstance(entry, dict):
            continue
        platform = entry.get("platform") or {}
        annotations = entry.get("annotations") or {}
        if (
            platform.get("os") == "unknown"
            or annotations.get("vnd.docker.reference.type") == "attestation-manifest"
        ):
            continue
        digest = entry.get("digest")
        if isinstance(digest, str):
            return digest
    return None


def build_info(
    client: RegistryClient, repo: Repository, tag: CanonicalTag, *, last_digest: str | None = None
) -> Build:
    """Digest and build time of one tag. A tag still where it was last time (`last_digest`) costs a
    HEAD and cached documents; any other, a GET by tag and whatever documents are not cached yet."""
    try:
        found = client.tag_manifest(repo, tag.tag, last_digest=last_digest)
        digest = found.digest
        top = found.json()
        manifest = top
        if top.get("mediaType") in INDEX_TYPES or "manifests" in top:
            child = _platform_child(top)
            manifest = client.get_manifest(repo, child).json() if child else {}
        config_digest = (manifest.get("config") or {}).get("digest")
        if isinstance(config_digest, str):
            config = json.loads(client.get_blob(repo, config_digest))
            if created := parse_created(config.get("created") if isinstance(config, dict) else None):
                return Build(tag, digest, created, SOURCE_CONFIG)
        for doc in (manifest, top):
            if created := parse_created((doc.get("annotations") or {}).get(ANNOTATION_CREATED)):
                return Build(tag, digest, created, SOURCE_ANNOTATION)
        return Build(tag, digest, None, SOURCE_UNKNOWN, "no created date in config or annotations")
    except (CCCatalogError, ValueError, OverflowError, RecursionError) as exc:  # one bad tag: unknown
        return Build(tag, None, None, SOURCE_UNKNOWN, str(exc))


def resolve_repository(
    client: RegistryClient,
    repo: Repository,
    *,
    refs: Iterable[str] | None = None,
    tags: Iterable[str | None] | None = None,
    workers: int = DEFAULT_WORKERS,
) -> list[RefResolution]:
    """The newest build of each ref (or only of `refs`). Raises RegistryError if tags cannot be listed."""
    groups = group_by_ref(client.list_tags(repo) if tags is None else tags)
    listed = {tag.tag for group in groups.values() for tag in group}
    if refs is not None:
        wanted = set(refs)
        groups = {ref: group for ref, group in groups.items() if ref in wanted}
    needs_metadata = [tag for group in groups.values() if len(group) > 1 for tag in group]
    infos: dict[CanonicalTag, Build] = {}
    if needs_metadata:
        last = client.last_digests(repo)

        def info(tag: CanonicalTag) -> Build:
            return build_info(client, repo, tag, last_digest=last.get(tag.tag))

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="oci") as pool:
            infos = dict(zip(needs_metadata, pool.map(info, needs_metadata), strict=True))
        # tags no longer listed are forgotten; a tag that failed this time keeps its old hint
        seen = {tag: digest for tag, digest in last.items() if tag in listed}
        seen.update((t.tag, b.digest) for t, b in infos.items() if b.digest)
        if seen != last:
            client.remember_digests(repo, seen)
    resolutions = []
    for ref, group in groups.items():
        if len(group) == 1:
            only = Build(group[0], source=SOURCE_ONLY)
            resolutions.append(RefResolution(ref, only, (only,)))
            continue
        builds = tuple(infos[t] for t in group)
        resolutions.append(RefResolution(ref, pick_newest(builds), builds))
    return resolutions


__all__ = [
    "Build",
    "RefResolution",
    "RegistryError",
    "build_info",
    "parse_created",
    "pick_newest",
    "resolve_repository",
]
