"""OCI image layouts (image-spec `image-layout.md`): a directory any OCI tool reads — `oci-layout`,
`index.json` naming each image by `org.opencontainers.image.ref.name`, `blobs/sha256/<hex>` — as a
target of `oci.copy` (writing only the blobs it is asked for) and as a source (every blob verified as
it is read).

A layout that leaves out the blobs its reader already holds is still a layout, but only a reader
with those blobs (the site registry, on `import`) can complete its images; `present` names them.
Blobs are written to a temporary name and renamed, so a blob file is always whole.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cccatalog.errors import RegistryError
from cccatalog.oci.answers import Hasher, media_type
from cccatalog.oci.cache import sha256_digest
from cccatalog.oci.client import Manifest

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LayoutEntry:
    """One image `index.json` names."""

    ref_name: str
    digest: str
    media_type: str
    size: int
    annotations: dict[str, str]


def blob_path(root: Path, digest: str) -> Path:
    m = _DIGEST_RE.fullmatch(digest)
    if m is None:
        raise RegistryError(f"{root}: {digest!r} is not a sha256 digest")
    return root / "blobs" / "sha256" / m.group(1)


def read_index(root: Path) -> list[LayoutEntry]:
    """The images a layout names; RegistryError when it is not a layout."""
    try:
        layout = json.loads((root / LAYOUT_FILE).read_bytes())
        index = json.loads((root / INDEX_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{root}: not an OCI image layout ({type(exc).__name__})") from None
    items = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(layout, dict) or not isinstance(items, list):
        raise RegistryError(f"{root}: not an OCI image layout (no manifests in {INDEX_FILE})")
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RegistryError(f"{root}: {INDEX_FILE} manifests[{i}]: expected an object")
        found = item.get("annotations")
        notes: dict[str, Any] = found if isinstance(found, dict) else {}
        digest, size, media = item.get("digest"), item.get("size"), item.get("mediaType")
        if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest) or not isinstance(size, int):
            raise RegistryError(f"{root}: {INDEX_FILE} manifests[{i}]: expected a sha256 digest and a size")
        entries.append(
            LayoutEntry(
                str(notes.get(REF_NAME, "")),
                digest,
                media if isinstance(media, str) else "",
                size,
                {str(k): str(v) for k, v in notes.items()},
            )
        )
    return entries


class LayoutTarget:
    """Writes images into the layout at `root` (created when missing). `present`: digests (blobs
    and manifests) the layout's eventual reader holds — reported as held and never written, except
    a manifest named by a tag, which is always written (the reader learns the name from it)."""

    def __init__(
        self, root: Path, *, present: Collection[str] = (), index_lock: threading.Lock | None = None
    ) -> None:
        self.root = root
        self.present = frozenset(present)
        # targets on one root that copy at the same time must share this: index.json is rewritten whole
        self._lock = index_lock or threading.Lock()
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        if not (root / LAYOUT_FILE).is_file():
            _write(root / LAYOUT_FILE, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        if not (root / INDEX_FILE).is_file():
            self._write_index([])

    @property
    def name(self) -> str:
        return f"oci:{self.root}"

    def find_manifest(self, reference: str) -> str | None:
        if reference.startswith("sha256:"):
            held = reference in self.present or blob_path(self.root, reference).is_file()
            return reference if held else None
        found = [e.digest for e in read_index(self.root) if e.ref_name == reference]
        return found[-1] if found else None

    def has_blob(self, digest: str) -> bool:
        return digest in self.present or blob_path(self.root, digest).is_file()

    def mount_blob(self, digest: str) -> bool:
        return False

    def put_blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None:
        path = blob_path(self.root, digest)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:  # verified by the source: the last chunk comes only when it matched
                    out.write(chunk)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> None:
        digest = sha256_digest(body)
        path = blob_path(self.root, digest)
        if not path.is_file():
            _write(path, body)
        if reference.startswith("sha256:"):
            return
        entry = {
            "mediaType": media_type,
            "digest": digest,
            "size": len(body),
            "annotations": {REF_NAME: reference},
        }
        with self._lock:
            kept = [e for e in _index_items(self.root) if e.get("annotations", {}).get(REF_NAME) != reference]
            self._write_index([*kept, entry])

    def _write_index(self, items: list[dict[str, Any]]) -> None:
        _write_index(self.root, items)


def sort_index(root: Path) -> None:
    """`index.json` in the order of its names: the same images give the same bytes, in whatever
    order concurrent copies finished."""
    items = _index_items(root)
    _write_index(root, sorted(items, key=lambda i: str(i.get("annotations", {}).get(REF_NAME, ""))))


def _write_index(root: Path, items: list[dict[str, Any]]) -> None:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": items}
    _write(root / INDEX_FILE, (json.dumps(index, indent=2) + "\n").encode())


class LayoutSource:
    """Reads images out of the layout at `root`; every manifest and blob is checked against its
    digest, and one the layout does not carry is a RegistryError naming it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def name(self) -> str:
        return f"oci:{self.root}"

    def manifest(self, reference: str) -> Manifest:
        if not reference.startswith("sha256:"):
            found = [e for e in read_index(self.root) if e.ref_name == reference]
            if not found:
                raise RegistryError(f"{self.name}: no image named {reference!r} in {INDEX_FILE}")
            reference = found[-1].digest
        try:
            body = blob_path(self.root, reference).read_bytes()
        except OSError:
            raise RegistryError(f"{self.name}: manifest {reference} is not in the layout") from None
        if sha256_digest(body) != reference:
            raise RegistryError(f"{self.name}: manifest {reference} does not match its digest; refused")
        return Manifest(reference, media_type(body), body)

    def blob(self, digest: str) -> Iterator[bytes]:
        path = blob_path(self.root, digest)
        try:
            handle = path.open("rb")
        except OSError:
            raise RegistryError(f"{self.name}: blob {digest} is not in the layout") from None
        with handle:
            chunks = iter(lambda: handle.read(_CHUNK), b"")
            yield from Hasher(digest, what=f"{self.name}: blob {digest}").verified(chunks)


def _index_items(root: Path) -> list[dict[str, Any]]:
    data = json.loads((root / INDEX_FILE).read_bytes())
    items = data.get("manifests") if isinstance(data, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
