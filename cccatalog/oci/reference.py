"""Image references: `ghcr.io/org/repo[:tag]` -> registry host, repository path, scheme. Pure."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from cccatalog.errors import UsageError
from cccatalog.names import REPOSITORY_COMPONENT_RE, split_registry_host

DOCKER_HUB = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")


@dataclass(frozen=True, slots=True)
class Repository:
    """One image repository on one registry."""

    host: str  # host[:port], lowercase
    path: str  # e.g. runwhen-contrib/rw-cli-codecollection, library/alpine
    plain_http: bool = False
    given: str = ""  # as the user wrote it (no scheme, tag or digest): what messages show

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}"

    @property
    def name(self) -> str:
        """How the user wrote it, else `ghcr.io/org/x` (Docker Hub shown as docker.io)."""
        if self.given:
            return self.given
        host = "docker.io" if self.host == DOCKER_HUB else self.host
        return f"{host}/{self.path}"


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1, with or without a port."""
    if host.startswith("["):
        hostname = host[1 : host.find("]")]
    else:
        hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


# OCI image spec: algorithm ":" encoded; sha256 and sha512 are the registered ones
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def parse_reference(text: str, *, allow_plain_http: bool = False) -> tuple[Repository, str | None]:
    """Parse `[host[:port]/]path[:tag]`. Loopback registries speak plain HTTP (as crane does); any other
    needs `allow_plain_http` for it."""
    ref = text.strip()
    for scheme in ("https://", "http://"):
        if ref.startswith(scheme):
            if scheme == "http://" and not allow_plain_http and not is_loopback(ref[7:].split("/", 1)[0]):
                raise UsageError(f"{text}: plain HTTP to a non-loopback registry needs an explicit opt-in")
            ref = ref[len(scheme) :]
    ref, at, digest = ref.partition("@")  # a digest pins content, not a repository: resolve by tag
    if at and not _DIGEST_RE.fullmatch(digest):
        raise UsageError(f"{text}: {digest!r} is not a digest (expected sha256: and 64 lowercase hex digits)")
    tag: str | None = None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
        if not _TAG_RE.fullmatch(tag):
            raise UsageError(f"{text}: {tag!r} is not a valid tag")
    given = ref
    given_host, path = split_registry_host(ref)
    host = given_host.lower() if given_host else DOCKER_HUB
    if host in _DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if not path or not all(REPOSITORY_COMPONENT_RE.fullmatch(c) for c in path.split("/")):
        raise UsageError(
            f"{text!r} is not a valid image repository: expected [host[:port]/]path with lowercase "
            "letters, digits and . _ - between slashes, like ghcr.io/org/repo"
        )
    return Repository(host, path, plain_http=is_loopback(host) or allow_plain_http, given=given), tag
