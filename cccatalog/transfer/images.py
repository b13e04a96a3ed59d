"""Images across the gap, carried in the update as an OCI image layout (`images/` in the file).

- The site's `manifest` says what its registry holds (`site_images`): per collection, the digest each
  tag of its catalog rows names there and every manifest and blob under them.
- `export` copies the images its catalog rows point at into the layout (`export_images`), leaving
  out every blob and manifest the site says it holds; the export manifest lists each image (slug,
  tag, digest, its name in the layout) and each blob file, so all of it is signed.
- `import` checks the list against the layout (`check_images`; every blob was hashed against its
  name when the file was unpacked) and pushes each image into the collection's `image_registry` of
  the site's config (`push_images`), with the same copy engine: blobs, manifests, the tag last. A
  collection whose images did not all arrive keeps its old catalog rows.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cccatalog.catalog.models import ImageRefRecord
from cccatalog.config import CodeCollection, Config
from cccatalog.errors import CCCatalogError, RegistryError, UsageError
from cccatalog.names import is_valid_slug
from cccatalog.oci.auth import source_auth
from cccatalog.oci.cache import state_cache
from cccatalog.oci.client import RegistryClient
from cccatalog.oci.copy import CopyProgress, RegistrySource, RegistryTarget, copy_between, image_contents
from cccatalog.oci.layout import INDEX_FILE, LAYOUT_FILE, LayoutSource, LayoutTarget, read_index, sort_index
from cccatalog.oci.reference import Repository, parse_reference
from cccatalog.redact import Redactor

LAYOUT = "images"
# Collections whose images are copied at once, each image with its own 4 blob workers: a quarter
# faster than one at a time against registries on the same machine (benchmarks/images), within the
# client's 16 requests per host.
IMAGES_AT_ONCE = 4
_Job = TypeVar("_Job")
_Done = TypeVar("_Done")
_BLOB_DIR = f"{LAYOUT}/blobs/sha256/"
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")

log = logging.getLogger("cccatalog.transfer")
_STALE_HINT = (
    "the site registry no longer holds what the site's manifest said it did: run cccatalog manifest "
    "at the site again and export --since it"
)


def is_member(name: str) -> bool:
    """A file of the layout inside an update."""
    if name in (f"{LAYOUT}/{LAYOUT_FILE}", f"{LAYOUT}/{INDEX_FILE}"):
        return True
    return name.startswith(_BLOB_DIR) and bool(_HEX_RE.fullmatch(name[len(_BLOB_DIR) :]))


def layout_files(staging: Path) -> list[str]:
    """The layout's members in the order they are written: the two small files, then the blobs."""
    root = staging / LAYOUT
    if not root.is_dir():
        return []
    blobs = sorted(p.name for p in (root / "blobs" / "sha256").iterdir() if _HEX_RE.fullmatch(p.name))
    return [f"{LAYOUT}/{LAYOUT_FILE}", f"{LAYOUT}/{INDEX_FILE}", *(f"{_BLOB_DIR}{b}" for b in blobs)]


# --- the site ---------------------------------------------------------------------------------------


def site_images(
    config: Config,
    rows: Mapping[str, Sequence[ImageRefRecord]],
    *,
    environ: Mapping[str, str],
    redactor: Redactor,
) -> dict[str, Any]:
    """What the site registry holds of each collection's catalog images. A registry that cannot be
    asked is said (`error`) and counts as holding nothing: the next export then carries it all."""
    found: dict[str, Any] = {}
    for cc in config.codecollections:
        tags = sorted({r.image_tag for r in rows.get(cc.slug, ()) if r.is_active and r.image_tag})
        if not cc.image_registry or not tags:
            continue
        entry: dict[str, Any] = {"repository": cc.image_registry, "tags": {}, "manifests": [], "blobs": []}
        try:
            with _Clients(config, environ=environ, redactor=redactor) as clients:
                repo, client = clients.get(cc)
                digests: set[str] = set()
                blobs: set[str] = set()
                for tag in tags:
                    digest = client.find_manifest(repo, tag)
                    if digest is None:
                        continue
                    contents = image_contents(RegistrySource(client, repo), digest)
                    entry["tags"][tag] = digest
                    digests |= {digest, *(m.digest for m in contents.manifests)}
                    blobs |= set(contents.blobs)
                entry["manifests"], entry["blobs"] = sorted(digests), sorted(blobs)
        except CCCatalogError as exc:
            message = redactor(str(exc))
            log.warning("%s: cannot list what %s holds: %s", cc.slug, cc.image_registry, message)
            entry = {"repository": cc.image_registry, "error": message}
        found[cc.slug] = entry
    return found


def _held(site_doc: Mapping[str, Any] | None, slug: str) -> set[str]:
    images = site_doc.get("images") if site_doc else None
    entry = images.get(slug) if isinstance(images, dict) else None
    if not isinstance(entry, dict):
        return set()
    held = set()
    for key in ("manifests", "blobs"):
        values = entry.get(key)
        if isinstance(values, list):
            held |= {v for v in values if isinstance(v, str) and _DIGEST_RE.fullmatch(v)}
    return held


# --- export -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CarriedImage:
    slug: str
    tag: str
    digest: str
    ref: str  # its name in the layout's index.json
    blobs: int  # blobs the update carries for it (the site lacks them)
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def export_images(
    config: Config,
    rows: Mapping[str, Sequence[ImageRefRecord]],
    staging: Path,
    *,
    site: Mapping[str, Any] | None,
    environ: Mapping[str, str],
    redactor: Redactor,
    progress: Callable[[CopyProgress], None] | None = None,
) -> list[CarriedImage]:
    """Copy the image of every active row into the layout under `staging`, without what the site
    holds, a few images at a time."""
    root = staging / LAYOUT
    index_lock = threading.Lock()
    LayoutTarget(root, index_lock=index_lock)  # an update with no images still carries an (empty) layout
    jobs: list[tuple[CodeCollection, str, str, LayoutTarget]] = []
    for slug, found in sorted(rows.items()):
        cc = config.collection(slug)
        active = [r for r in found if r.is_active and r.image_registry and r.image_tag]
        wanted = sorted({(r.image_registry or "", r.image_tag) for r in active})
        if cc is not None and wanted:
            target = LayoutTarget(root, present=_held(site, slug), index_lock=index_lock)
            jobs += [(cc, registry, tag, target) for registry, tag in wanted]
    with _Clients(config, environ=environ, redactor=redactor) as clients:

        def carry(job: tuple[CodeCollection, str, str, LayoutTarget]) -> CarriedImage:
            cc, registry, tag, target = job
            repo, client = clients.get(cc, registry)
            ref = f"{cc.slug}:{tag}"
            result = copy_between(RegistrySource(client, repo), tag, target, ref, progress=progress)
            log.info("%s: %s:%s carries %d blobs", cc.slug, registry, tag, result.blobs_copied)
            return CarriedImage(cc.slug, tag, result.digest, ref, result.blobs_copied, result.bytes_copied)

        carried = _each(carry, jobs, group=lambda job: job[0].slug)
    sort_index(root)
    return carried


def manifest_block(carried: Sequence[CarriedImage], staging: Path) -> dict[str, Any]:
    """`transfer.images` of the export manifest: the images and every blob file, digest and size."""
    blob_dir = staging / LAYOUT / "blobs" / "sha256"
    blobs = {
        f"sha256:{p.name}": p.stat().st_size for p in sorted(blob_dir.iterdir()) if _HEX_RE.fullmatch(p.name)
    }
    return {"layout": LAYOUT, "images": [c.to_json() for c in carried], "blobs": blobs}


# --- import -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImagesPlan:
    layout: Path
    images: list[CarriedImage]


@dataclass(frozen=True, slots=True)
class ImageImport:
    slug: str
    tag: str
    digest: str
    action: str  # pushed, present, failed
    blobs_pushed: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def expected_members(transfer: Mapping[str, Any], *, source: str) -> dict[str, dict[str, Any]]:
    """The layout files the signed manifest lists, each with the sha256 and size it must have (a
    blob's is its name); empty for an update without images (`--no-images`)."""
    block = transfer.get("images")
    if block is None:
        return {}
    blobs = block.get("blobs") if isinstance(block, dict) else None
    if not isinstance(blobs, dict) or not all(
        isinstance(d, str) and _DIGEST_RE.fullmatch(d) and isinstance(n, int) and n >= 0
        for d, n in blobs.items()
    ):
        raise UsageError(f"{source}: transfer.images.blobs: expected sha256 digests mapped to sizes")
    return {
        f"{_BLOB_DIR}{d.removeprefix('sha256:')}": {"sha256": d.removeprefix("sha256:"), "size": n}
        for d, n in blobs.items()
    }


def check_images(
    config: Config, transfer: Mapping[str, Any], layout: Path, *, source: str
) -> ImagesPlan | None:
    """The images an update carries, checked against the layout and this site's config."""
    block = transfer.get("images")
    if block is None:
        return None
    listed = block.get("images") if isinstance(block, dict) else None
    if not isinstance(listed, list):
        raise UsageError(f"{source}: transfer.images.images: expected a list")
    try:
        named = {e.ref_name: e.digest for e in read_index(layout)} if (layout / INDEX_FILE).is_file() else {}
    except RegistryError as exc:  # a layout that is not one: the update is refused, as a bad bundle is
        raise UsageError(f"{source}: {LAYOUT}/{INDEX_FILE}: {exc}") from None
    images = []
    for i, item in enumerate(listed):
        where = f"{source}: transfer.images.images[{i}]"
        try:
            image = CarriedImage(**{k: item[k] for k in ("slug", "tag", "digest", "ref", "blobs", "bytes")})
        except (TypeError, KeyError):
            raise UsageError(f"{where}: expected slug, tag, digest, ref, blobs and bytes") from None
        if not (
            is_valid_slug(image.slug) and _TAG_RE.fullmatch(image.tag) and _DIGEST_RE.fullmatch(image.digest)
        ):
            raise UsageError(f"{where}: expected a slug, a tag and a sha256 digest")
        if named.get(image.ref) != image.digest:
            raise UsageError(
                f"{where}: the layout does not name {image.ref} as {image.digest} (damaged or tampered)"
            )
        cc = config.collection(image.slug)
        if cc is None or not cc.image_registry:
            raise UsageError(
                f"{image.slug}: the update carries its images, but {config.path} gives it no "
                "image_registry to push them to; add one (or export with --no-images)"
            )
        images.append(image)
    return ImagesPlan(layout, images)


def push_images(
    config: Config,
    plan: ImagesPlan,
    *,
    environ: Mapping[str, str],
    redactor: Redactor,
    progress: Callable[[CopyProgress], None] | None = None,
) -> list[ImageImport]:
    """Every carried image into its collection's site registry, under its tag, digests unchanged, a
    few images at a time."""
    source = LayoutSource(plan.layout)
    with _Clients(config, environ=environ, redactor=redactor) as clients:

        def push(image: CarriedImage) -> ImageImport:
            cc = config.collection(image.slug)
            assert cc is not None  # check_images made sure, and that it names an image_registry
            try:
                repo, client = clients.get(cc)
                target = RegistryTarget(client, repo)
                there = target.find_manifest(image.tag) == image.digest
                result = copy_between(source, image.ref, target, image.tag, progress=progress)
            except CCCatalogError as exc:
                error = str(exc)
                if "is not in the layout" in error:  # the site's manifest said it held what it no longer does
                    error += f"; {_STALE_HINT}"
                return ImageImport(image.slug, image.tag, image.digest, "failed", error=redactor(error))
            action = "present" if there else "pushed"
            return ImageImport(image.slug, image.tag, result.digest, action, result.blobs_copied)

        return _each(push, plan.images, group=lambda image: image.slug)


def _each(
    work: Callable[[_Job], _Done], jobs: Sequence[_Job], *, group: Callable[[_Job], str]
) -> list[_Done]:
    """`work` on every job, results in the order of `jobs`. Jobs of one group (one collection: its
    builds share base layers) run one after another, so a shared blob is found present by the
    second rather than copied by both; `IMAGES_AT_ONCE` groups run at a time. The first failure is
    raised once the copies under way have ended; groups not started are not started."""
    groups: dict[str, list[int]] = {}
    for n, job in enumerate(jobs):
        groups.setdefault(group(job), []).append(n)
    done: dict[int, _Done] = {}

    def run_group(members: list[int]) -> None:
        for n in members:
            done[n] = work(jobs[n])

    with ThreadPoolExecutor(max_workers=IMAGES_AT_ONCE, thread_name_prefix="image") as pool:
        futures = [pool.submit(run_group, members) for members in groups.values()]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [done[n] for n in range(len(jobs))]


def failed_slugs(done: Collection[ImageImport]) -> set[str]:
    return {d.slug for d in done if d.action == "failed"}


class _Clients:
    """One registry client per source (its credentials, its token cache), closed together."""

    def __init__(self, config: Config, *, environ: Mapping[str, str], redactor: Redactor) -> None:
        self.config = config
        self.environ = environ
        self.redactor = redactor
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def get(self, cc: CodeCollection, image_registry: str | None = None) -> tuple[Repository, RegistryClient]:
        """The repository `image_registry` (default: the collection's) and the client of its source."""
        source = self.config.source(cc.source)
        if source is None:
            raise UsageError(f"{cc.slug}: no source {cc.source!r} in {self.config.path}")
        where = image_registry or cc.image_registry or ""
        repo, _tag = parse_reference(where, allow_plain_http=source.plain_http)
        with self._lock:  # images are copied a few at a time: still one client per source
            if source.name not in self._clients:
                # manifests by digest never change: the cache `sync` keeps beside the state serves
                # them again to every export and manifest after the first
                auth_for = source_auth(source, self.environ, self.redactor)
                self._clients[source.name] = RegistryClient(auth_for=auth_for, cache=state_cache(self.config))
        return repo, self._clients[source.name]

    def __enter__(self) -> _Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self._clients.values():
            client.close()
