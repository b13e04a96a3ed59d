"""The `destinations:` block as typed objects: registries the newest builds are copied to (the
predecessor's `jfrog` destinations, and plain OCI registries), with their credentials and filters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from cccatalog.config.auth import DestinationAuth
from cccatalog.config.settings import setting

DestinationType = Literal["jfrog", "registry"]
Pointer = Literal["latest", "stable"]


@dataclass(frozen=True, slots=True)
class MirrorFilter:
    """Which builds a destination receives (the predecessor's defaults)."""

    codecollections: tuple[str, ...] = setting(
        ("*",), doc='slugs to mirror, or `["*"]` for all', shown='`["*"]`'
    )
    include_pointers: tuple[Pointer, ...] = setting(
        ("latest", "stable"), doc="the builds `latest` and `stable` point at", shown="`[latest, stable]`"
    )
    include_branches: tuple[str, ...] = setting(
        ("main",), doc="branches whose newest build is mirrored", shown="`[main]`"
    )
    include_semver_tags: bool = setting(True, doc="builds of tags named like `v1.2` or `1.2.3`")
    include_pr_refs: bool = setting(False, doc="builds of refs named `pr-…`")

    def tracks(self, slug: str) -> bool:
        # An empty list tracks every collection, as the predecessor read it.
        return not self.codecollections or "*" in self.codecollections or slug in self.codecollections


@dataclass(frozen=True, slots=True)
class Destination:
    """A registry the newest builds are copied to (the predecessor's `destinations[]`)."""

    name: str = setting(doc="unique destination name", required=True)
    type: DestinationType = setting(
        "jfrog",
        doc="`jfrog` (Artifactory: `base_url` + `repo_key`) or `registry` (any OCI registry: `registry`)",
    )
    base_url: str | None = setting(doc="`jfrog`: the Artifactory URL, like `https://acme.jfrog.io`")
    repo_key: str | None = setting(doc="`jfrog`: the Docker repository key")
    path_prefix: str | None = setting(doc="`jfrog`: a path under the repository, like `codecollections`")
    registry: str | None = setting(doc="`registry`: `host[:port]/prefix` images are copied under")
    auth: DestinationAuth = setting(
        DestinationAuth(), doc="credentials for this destination only", shown="anonymous"
    )
    enable_xray_scan: bool = setting(False, doc="`jfrog`: ask Xray to scan each pushed image (best effort)")
    mirror: MirrorFilter = setting(
        MirrorFilter(), doc="which builds to mirror (the keys below)", shown="the defaults below"
    )

    @property
    def host(self) -> str:
        """The registry host (with port) images are pushed to."""
        if self.type == "jfrog":
            return urlsplit(self.base_url or "").netloc.lower()
        return (self.registry or "").split("/", 1)[0].lower()

    @property
    def repository_prefix(self) -> str:
        """The repository path every target starts with: `<repo_key>[/<path_prefix>]` or the registry's."""
        if self.type == "jfrog":
            return "/".join(p for p in (self.repo_key, (self.path_prefix or "").strip("/")) if p)
        return (self.registry or "").partition("/")[2].strip("/")
