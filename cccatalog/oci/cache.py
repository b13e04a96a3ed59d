"""Content-addressed disk cache for immutable registry content (manifests by digest, config blobs).

An entry is written only after its sha256 matches the digest it is stored under, via a temporary file
and rename, so a reader never sees a partial or wrong entry. Entries never expire: content behind a
digest cannot change.

Beside it, per repository, the digest each tag pointed at last time. That is only a hint (tags move,
so the registry is asked again every run): it says whether a tag's manifest is probably cached, and so
whether a HEAD (warm) or a GET by tag (cold: body and digest in one request) is the cheaper question.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from cccatalog.atomic import write_atomic
from cccatalog.config import Config

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DigestMismatch(ValueError):
    """Content does not hash to the digest it was fetched by."""


class BlobCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path | None:
        m = _DIGEST_RE.fullmatch(digest)
        if m is None:
            return None  # not a digest we can verify: never cached
        hexd = m.group(1)
        return self.root / "sha256" / hexd[:2] / hexd

    def get(self, digest: str) -> bytes | None:
        path = self._path(digest)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError:
            return None

    def put(self, digest: str, data: bytes) -> None:
        """Store `data` under `digest`; raises DigestMismatch when they disagree."""
        path = self._path(digest)
        if path is None:
            return
        if sha256_digest(data) != digest:
            raise DigestMismatch(f"content does not match {digest}")
        if path.exists():
            return
        self._write(path, data)

    def _tags_path(self, repository: str) -> Path:
        # hashed: a repository name is not a safe file name (length, `..`, a host's port)
        return self.root / "tags" / (hashlib.sha256(repository.encode()).hexdigest()[:32] + ".json")

    def tag_digests(self, repository: str) -> dict[str, str]:
        """tag -> the digest it pointed at when last seen; empty when unknown or unreadable."""
        try:
            data = json.loads(self._tags_path(repository).read_bytes())
        except (OSError, ValueError, RecursionError):
            return {}
        tags = data.get("tags") if isinstance(data, dict) and data.get("repository") == repository else None
        if not isinstance(tags, dict):
            return {}
        return {
            tag: digest
            for tag, digest in tags.items()
            if isinstance(tag, str) and isinstance(digest, str) and _DIGEST_RE.fullmatch(digest)
        }

    def put_tag_digests(self, repository: str, digests: Mapping[str, str]) -> None:
        """Replace what `tag_digests` answers for `repository` (atomically: readers see old or new)."""
        body = json.dumps({"repository": repository, "tags": dict(sorted(digests.items()))}, indent=0)
        self._write(self._tags_path(repository), body.encode())

    def _write(self, path: Path, data: bytes) -> None:
        """Via a temporary file and a rename, so a reader sees the whole entry or none."""
        # not durable: an entry is verified by its digest when read, and fetched again when torn
        try:
            write_atomic(path, data, mode=None, durable=False)
        except FileNotFoundError:  # the directory's first entry: mkdir then, not before every entry
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, mode=None, durable=False)


def state_cache(config: Config) -> BlobCache:
    """The cache of `config`'s host: beside the state file (this host's own directory with a
    PostgreSQL state), since registry documents belong to the host that fetched them."""
    return BlobCache(config.state.local_dir / "oci-cache")
