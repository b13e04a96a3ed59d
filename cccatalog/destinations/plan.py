"""Which builds a destination receives and where each lands: pure functions over the config and the
image rows, table-tested, as the predecessor decided them.

A ref qualifies when `latest` or `stable` points at it and that pointer is listed, when its name is a
listed branch, when it is a semver tag (`include_semver_tags`), or when its name starts with `pr-`
(`include_pr_refs`). The source is pinned by digest when the row knows it. The target keeps the
source tag verbatim: `<host>/<repo_key>[/<path_prefix>]/<slug>:<tag>` on Artifactory,
`<registry>/<slug>:<tag>` on any other registry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.pointers import pointers
from cccatalog.config import Destination, MirrorFilter
from cccatalog.oci.reference import is_loopback

# The predecessor's test of a release tag: a prefix match, so `v1.2-rc1` and `1.2.3` both qualify.
SEMVER_TAG = re.compile(r"v?\d+\.\d+(\.\d+)?")


@dataclass(frozen=True, slots=True)
class Target:
    """Where one build lands on a destination."""

    host: str  # host[:port]
    path: str  # the repository path on that registry
    tag: str
    scheme: str = "https"

    @property
    def ref(self) -> str:
        """`host/path:tag`, as the API and the resolve answer show it."""
        return f"{self.host}/{self.path}:{self.tag}"


@dataclass(frozen=True, slots=True)
class Work:
    """One build to have on one destination: a mirror job when the destination does not have it yet."""

    destination: str
    slug: str
    source_image_tag: str
    source_ref: str
    target: Target


def qualifies(refs: Sequence[ImageRefRecord], mirror: MirrorFilter) -> list[ImageRefRecord]:
    """The active refs with an image that `mirror` selects, in the order given."""
    latest, stable = pointers(refs)
    chosen = []
    for ref in refs:
        if not (ref.is_active and ref.image_tag):
            continue
        if (
            (ref is latest and "latest" in mirror.include_pointers)
            or (ref is stable and "stable" in mirror.include_pointers)
            or ref.ref in mirror.include_branches
            or (mirror.include_semver_tags and ref.ref_type == "tag" and SEMVER_TAG.match(ref.ref))
            or (mirror.include_pr_refs and ref.ref.startswith("pr-"))
        ):
            chosen.append(ref)
    return chosen


def source_ref(ref: ImageRefRecord) -> str | None:
    """`registry@digest` when the row knows the digest, else `registry:tag`; None without a registry."""
    if not ref.image_registry:
        return None
    if ref.image_digest:
        return f"{ref.image_registry}@{ref.image_digest}"
    return f"{ref.image_registry}:{ref.image_tag}"


def target_for(destination: Destination, slug: str, tag: str) -> Target:
    prefix = destination.repository_prefix
    path = f"{prefix}/{slug}" if prefix else slug
    return Target(destination.host, path.lower(), tag, _scheme(destination))


def plan(destination: Destination, slug: str, refs: Sequence[ImageRefRecord]) -> list[Work]:
    """What `destination` should hold of one collection (nothing when it does not track it)."""
    if not destination.mirror.tracks(slug):
        return []
    work = []
    for ref in qualifies(refs, destination.mirror):
        if (source := source_ref(ref)) is not None:
            target = target_for(destination, slug, ref.image_tag)
            work.append(Work(destination.name, slug, ref.image_tag, source, target))
    return work


def exists_url(destination: Destination, target: Target) -> str:
    """Where "is it there already?" is asked: Artifactory's Docker API path for `jfrog` (what the
    predecessor asked), the registry's own manifest URL otherwise."""
    base = f"{target.scheme}://{target.host}"
    if destination.type == "jfrog" and destination.repo_key:
        in_repo = target.path.removeprefix(f"{destination.repo_key}/")
        return f"{base}/artifactory/api/docker/{destination.repo_key}/v2/{in_repo}/manifests/{target.tag}"
    return f"{base}/v2/{target.path}/manifests/{target.tag}"


def xray_request(destination: Destination, target: Target) -> tuple[str, dict[str, str]]:
    """Xray's scan request for a pushed tag (the predecessor's): its URL and JSON body."""
    in_repo = target.path.removeprefix(f"{destination.repo_key}/")
    component = f"docker://{destination.repo_key}/{in_repo}/{target.tag}/manifest.json"
    return f"{target.scheme}://{target.host}/xray/api/v1/scanArtifact", {"componentID": component}


def _scheme(destination: Destination) -> str:
    if destination.type == "jfrog":
        return urlsplit(destination.base_url or "").scheme or "https"
    # As for sources: a loopback registry speaks plain HTTP (as crane does), any other HTTPS.
    return "http" if is_loopback(destination.host) else "https"
