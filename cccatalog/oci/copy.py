"""Copying an image, byte for byte: from a registry (or an OCI image layout) to a registry (or one).

What is copied: the manifest or index a reference names, every manifest an index lists (every
platform, attestation manifests too, nested indexes), and every blob they name. Nothing is rewritten,
so the digests at the target are the source's. The order is what makes a killed copy harmless:

1. blobs, each streamed and verified against its digest as it passes (a mismatching blob is refused
   and never completed at the target); blobs the target holds are skipped (HEAD), blobs another
   repository of the same registry holds are mounted;
2. child manifests by digest, each after its blobs (deepest first);
3. the top-level manifest or index under the tag, last.

A tag therefore never names anything missing, and a copy that was stopped anywhere is finished by
the next one, which skips what is there. A child manifest the target already holds is not walked:
a registry stores a manifest only once it holds what it names.

`ImageSource` and `ImageTarget` are the seam: a registry repository (`RegistrySource`,
`RegistryTarget`) or an OCI image layout (`oci.layout`) on either side.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from cccatalog.errors import RegistryError
from cccatalog.oci.answers import media_type
from cccatalog.oci.client import INDEX_TYPES, Manifest, RegistryClient
from cccatalog.oci.reference import Repository

log = logging.getLogger("cccatalog.oci")
BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"


@dataclass(frozen=True, slots=True)
class CopyProgress:
    image: str
    blobs_done: int
    blobs_total: int
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True, slots=True)
class CopyResult:
    digest: str  # of the top-level manifest or index, identical at source and target
    blobs_copied: int
    blobs_skipped: int
    blobs_mounted: int
    bytes_copied: int


class ImageSource(Protocol):
    @property
    def name(self) -> str:
        """What messages call it."""
        ...

    def manifest(self, reference: str) -> Manifest:
        """The manifest a tag or digest names, verified against its digest."""
        ...

    def blob(self, digest: str) -> Iterator[bytes]:
        """The blob's bytes as they come, the last chunk only once they hashed to `digest`."""
        ...


class ImageTarget(Protocol):
    @property
    def name(self) -> str: ...

    def find_manifest(self, reference: str) -> str | None: ...

    def has_blob(self, digest: str) -> bool: ...

    def mount_blob(self, digest: str) -> bool:
        """True when the blob was made present without its bytes (a cross-repository mount)."""
        ...

    def put_blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None: ...

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RegistrySource:
    client: RegistryClient
    repo: Repository

    @property
    def name(self) -> str:
        return self.repo.name

    def manifest(self, reference: str) -> Manifest:
        if reference.startswith("sha256:"):
            return self.client.get_manifest(self.repo, reference)
        return self.client.tag_manifest(self.repo, reference)

    def blob(self, digest: str) -> Iterator[bytes]:
        return self.client.iter_blob(self.repo, digest)


class RegistryTarget:
    """A repository to copy into. `mount_from`: a repository on the same registry that may hold
    the blobs; `chunk_size`: None for one streamed PUT per blob, else PATCHes of that size."""

    def __init__(
        self,
        client: RegistryClient,
        repo: Repository,
        *,
        mount_from: Repository | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.client = client
        self.repo = repo
        self.mount_from = mount_from if mount_from is not None and mount_from.host == repo.host else None
        self.chunk_size = chunk_size
        # uploads a declined mount started (the registry answers a mount it will not do with a new
        # upload): the blob's bytes go there instead of to yet another one
        self._started: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.repo.name

    def find_manifest(self, reference: str) -> str | None:
        return self.client.find_manifest(self.repo, reference)

    def has_blob(self, digest: str) -> bool:
        return self.client.blob_size(self.repo, digest) is not None

    def mount_blob(self, digest: str) -> bool:
        if self.mount_from is None:
            return False
        upload = self.client.mount_or_start_upload(self.repo, digest, mount_from=self.mount_from)
        if upload is None:
            return True
        self._started[digest] = upload
        return False

    def put_blob(self, digest: str, size: int, chunks: Iterator[bytes]) -> None:
        upload = self._started.pop(digest, None) or self.client.mount_or_start_upload(
            self.repo, digest, mount_from=None
        )
        assert upload is not None  # no mount was asked for
        self.client.upload_blob(self.repo, upload, digest, size, chunks, chunk_size=self.chunk_size)

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> None:
        self.client.put_manifest(self.repo, reference, body, media_type)


def copy_image(  # noqa: PLR0917 - the stable interface mirroring codes against
    source: RegistryClient,
    src: Repository,
    reference: str,
    target: RegistryClient,
    dst: Repository,
    tag: str,
    *,
    workers: int = 4,
    progress: Callable[[CopyProgress], None] | None = None,
) -> CopyResult:
    """Copy `src` at `reference` (a tag or a `sha256:` digest) to `dst` as `tag`, digests unchanged.

    Blobs another repository of the same registry holds are mounted from `src` when both are on one
    host. Raises RegistryError naming the image (never credentials); the target's tag is then as
    it was."""
    mount_from = src if src.host == dst.host else None
    return copy_between(
        RegistrySource(source, src),
        reference,
        RegistryTarget(target, dst, mount_from=mount_from),
        tag,
        workers=workers,
        progress=progress,
    )


def copy_between(
    source: ImageSource,
    reference: str,
    target: ImageTarget,
    tag: str,
    *,
    workers: int = 4,
    progress: Callable[[CopyProgress], None] | None = None,
) -> CopyResult:
    """`copy_image` between any source and target (registries, OCI image layouts)."""
    image = (
        f"{source.name}:{reference}" if not reference.startswith("sha256:") else f"{source.name}@{reference}"
    )
    try:
        return _copy(source, reference, target, tag, image=image, workers=workers, progress=progress)
    except RegistryError as exc:
        raise RegistryError(
            f"copying {image} to {target.name}:{tag}: {exc}", status=exc.status, codes=exc.codes
        ) from None


@dataclass(frozen=True, slots=True)
class ImageContents:
    """Everything an image is made of: its top-level manifest, the manifests under it, its blobs."""

    top: Manifest
    manifests: list[Manifest]  # deepest first
    blobs: dict[str, int]  # digest -> size


def image_contents(source: ImageSource, reference: str) -> ImageContents:
    """Walk the image `reference` names: every manifest under it and every blob they name."""
    top = source.manifest(reference)
    plan = _plan(source, None, top)
    return ImageContents(top, plan.children, plan.blobs)


@dataclass(frozen=True, slots=True)
class _Plan:
    top: Manifest
    children: list[Manifest]  # deepest first: each before any index that lists it
    blobs: dict[str, int]  # digest -> size, of the children (and top) the target lacks


def _copy(
    source: ImageSource,
    reference: str,
    target: ImageTarget,
    tag: str,
    *,
    image: str,
    workers: int,
    progress: Callable[[CopyProgress], None] | None,
) -> CopyResult:
    top = source.manifest(reference)
    if target.find_manifest(tag) == top.digest:
        return CopyResult(top.digest, 0, 0, 0, 0)  # already there, whole: a registry holds nothing half
    plan = _plan(source, target, top, workers=workers)
    counts = _copy_blobs(source, target, plan.blobs, image=image, workers=workers, progress=progress)
    try:
        _put_manifests(target, plan, tag)
    except RegistryError as exc:
        if BLOB_UNKNOWN not in exc.codes:
            raise
        # The registry acknowledged every blob, then refused a manifest naming one as unknown (seen
        # with distribution while other clients pushed the same blobs): ask about each blob again,
        # send what it lacks, and put the manifests once more. A second refusal is the error.
        log.warning("%s: %s; checking every blob again and trying once more", image, exc)
        _copy_blobs(source, target, plan.blobs, image=image, workers=workers, progress=None)
        _put_manifests(target, plan, tag)
    return CopyResult(top.digest, *counts)


def _put_manifests(target: ImageTarget, plan: _Plan, tag: str) -> None:
    """The children by digest, deepest first, then the tag: a tag never names what is not there."""
    for child in plan.children:
        target.put_manifest(child.digest, child.body, _type_of(child))
    target.put_manifest(tag, plan.top.body, _type_of(plan.top))


def _plan(source: ImageSource, target: ImageTarget | None, top: Manifest, *, workers: int = 4) -> _Plan:
    """What to copy: the manifests under `top` the target lacks (asked about, and fetched, a few at
    a time: an index of N platforms is N round trips otherwise) and the blobs they name."""
    children: list[Manifest] = []
    blobs: dict[str, int] = {}

    def lacking(digest: str) -> Manifest | None:
        if target is not None and target.find_manifest(digest) == digest:
            return None  # present at the target: so is everything it names
        return source.manifest(digest)

    def walk(manifest: Manifest, *, is_top: bool) -> None:
        doc = _document(manifest)
        if _type_of(manifest) in INDEX_TYPES or "manifests" in doc:
            listed = dict.fromkeys(e["digest"] for e in _descriptors(doc.get("manifests"), manifest))
            wanted = [d for d in listed if not any(c.digest == d for c in children)]
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wanted) or 1))) as pool:
                found = list(pool.map(lacking, wanted))
            for child in found:
                if child is not None:
                    walk(child, is_top=False)
        else:
            named = [doc.get("config"), *(doc.get("layers") or [])]
            for entry in _descriptors(named, manifest):
                blobs.setdefault(entry["digest"], entry["size"])
        if not is_top:
            children.append(manifest)

    walk(top, is_top=True)
    return _Plan(top, children, blobs)


def _copy_blobs(
    source: ImageSource,
    target: ImageTarget,
    blobs: dict[str, int],
    *,
    image: str,
    workers: int,
    progress: Callable[[CopyProgress], None] | None,
) -> tuple[int, int, int, int]:
    """Every blob of `blobs` present at the target; returns (copied, skipped, mounted, bytes copied)."""
    lock = threading.Lock()
    done = {"copied": 0, "skipped": 0, "mounted": 0, "bytes": 0, "bytes_done": 0}
    total_bytes = sum(blobs.values())

    def one(digest: str, size: int) -> None:
        if target.has_blob(digest):
            outcome, sent = "skipped", 0
        elif target.mount_blob(digest):
            outcome, sent = "mounted", 0
        else:
            chunks = source.blob(digest)
            try:
                target.put_blob(digest, size, chunks)
            finally:
                # an upload that failed early leaves the download open: end it now, not at collection
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            outcome, sent = "copied", size
        with lock:
            done[outcome] += 1
            done["bytes"] += sent
            done["bytes_done"] += size
            finished = done["copied"] + done["skipped"] + done["mounted"]
            if progress is not None:
                progress(CopyProgress(image, finished, len(blobs), done["bytes_done"], total_bytes))

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="copy") as pool:
        futures = [pool.submit(one, digest, size) for digest, size in sorted(blobs.items())]
        errors = []
        for future in futures:
            if (exc := future.exception()) is not None:
                errors.append(exc)
        if errors:
            raise errors[0]
    return done["copied"], done["skipped"], done["mounted"], done["bytes"]


def _document(manifest: Manifest) -> dict[str, Any]:
    try:
        doc = json.loads(manifest.body)
    except ValueError:
        raise RegistryError(f"manifest {manifest.digest} is not JSON") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"manifest {manifest.digest} is not a JSON object")
    return doc


def _descriptors(entries: object, manifest: Manifest) -> list[dict[str, Any]]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise RegistryError(f"manifest {manifest.digest}: expected a list of descriptors")
    found = []
    for entry in entries:
        if entry is None:
            continue
        digest = entry.get("digest") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise RegistryError(f"manifest {manifest.digest}: a descriptor without a sha256 digest")
        if not isinstance(size, int) or size < 0:
            raise RegistryError(f"manifest {manifest.digest}: descriptor {digest} has no size")
        found.append({"digest": digest, "size": size})
    return found


def _type_of(manifest: Manifest) -> str:
    return manifest.media_type or media_type(manifest.body)
