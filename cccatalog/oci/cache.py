"""Content-addressed disk cache for immutable registry content (manifests by digest, config blobs).

An entry is written only after its sha256 matches the digest it is stored under, via a temporary file
and rename, so a reader never sees a partial or wrong entry. Entries never expire: content behind a
digest cannot change.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
