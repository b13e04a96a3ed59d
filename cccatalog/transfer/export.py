"""`cccatalog export`: one file that brings a site from what its manifest says to what this host has.

Per repo: nothing when the site is already there; only refs (moved back, deleted, or pointing at
objects the site has) when no object is new; otherwise a git bundle of exactly what the site lacks,
with the site's refs as prerequisites — those this mirror still has objects for, so a force-pushed
branch whose old commit is gone here only makes the bundle larger, never wrong. A repo the site does
not have (or every repo, without `--since`) gets a full bundle. Then the catalog rows, the images they
point at (named in images.txt, and carried as an OCI image layout without what the site's registry
holds: `transfer.images`), and the manifest over all of it, signed when a key is given. Each mirror
is read under its lock, so a sync running beside the export never hands it a half-moved repo.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cccatalog import manifest
from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.rows import image_reference, row_to_json
from cccatalog.config import Config
from cccatalog.errors import UsageError
from cccatalog.gitmirror import bundles
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.locks import file_lock
from cccatalog.gitmirror.servable import mirrored_slugs
from cccatalog.oci.copy import CopyProgress
from cccatalog.paths import require_writable_dir
from cccatalog.redact import Redactor, strip_url_credentials
from cccatalog.timestamps import parse_rfc3339
from cccatalog.transfer import archive
from cccatalog.transfer import images as transfer_images
from cccatalog.transfer.order import new_sequence

CATALOG_FORMAT = "cccatalog-catalog/1"


@dataclass(frozen=True, slots=True)
class RepoExport:
    slug: str
    kind: str  # full, incremental, refs (no new objects), unchanged
    refs_changed: int
    bundle: str | None = None
    sha256: str | None = None
    size: int = 0
    prerequisites: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "kind": self.kind,
            "refs_changed": self.refs_changed,
            "bundle": self.bundle,
            "sha256": self.sha256,
            "size": self.size,
            "prerequisites": list(self.prerequisites),
        }


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    size: int
    signed: bool
    since: str | None
    repos: list[RepoExport] = field(default_factory=list)
    images: int = 0
    collections: int = 0
    carried: list[transfer_images.CarriedImage] | None = None  # None: --no-images

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size": self.size,
            "signed": self.signed,
            "since": self.since,
            "collections": self.collections,
            "images": self.images,
            "repos": [r.to_json() for r in self.repos],
            "carried_images": None if self.carried is None else [c.to_json() for c in self.carried],
        }


def export_update(
    config: Config,
    git: Git,
    *,
    out: Path,
    since: Path | None,
    sign_key: Path | None,
    environ: Mapping[str, str],
    images: bool = True,
    redactor: Redactor | None = None,
    progress: Callable[[CopyProgress], None] | None = None,
) -> ExportResult:
    """Write the update file `out`; everything is checked before anything is written. `images`:
    carry the images the catalog rows point at (`transfer.images`), else only name them."""
    out = out.absolute()  # git runs in each mirror: a relative path would land there
    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory; name the file to write")
    require_writable_dir(out.parent, setting="--out")
    site: manifest.Manifest | None = None
    since_info: dict[str, Any] | None = None
    if since is not None:
        data, site = manifest.read(since, what="--since")
        manifest.require_same_collections(config, site, what=f"--since {since}")
        since_info = {
            "kind": site.kind,
            "created_at": site.document.get("created_at"),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    if sign_key is not None and not sign_key.is_file():
        raise UsageError(f"--sign-key {sign_key}: no such file")
    slugs = sorted(mirrored_slugs(config, ignore_enabled=True))
    layout = Layout(config.git.data_dir)
    missing = [s for s in slugs if not (layout.repo(s) / "HEAD").is_file()]
    if missing:
        raise UsageError(
            f"no mirror of {', '.join(missing)} in {config.git.data_dir}: run cccatalog sync first"
        )
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        (staging / archive.BUNDLES).mkdir()
        repos, entries = [], []
        for slug in slugs:
            entry, exported = _export_repo(config, git, layout, slug, site=site, staging=staging)
            entries.append(entry)
            repos.append(exported)
        rows = _catalog_rows(config)
        files = {
            archive.CATALOG: _write(staging / archive.CATALOG, _catalog_json(rows)),
            archive.IMAGES: _write(staging / archive.IMAGES, _images_txt(rows)),
        }
        transfer: dict[str, Any] = {
            "since": since_info,
            "files": files,
            "repos": [r.to_json() for r in repos],
            "sequence": new_sequence(),
        }
        carried: list[transfer_images.CarriedImage] = []
        if images:
            carried = transfer_images.export_images(
                config,
                rows,
                staging,
                site=site.document if site else None,
                environ=environ,
                redactor=redactor or Redactor(),
                progress=progress,
            )
            transfer["images"] = transfer_images.manifest_block(carried, staging)
            for name in transfer_images.layout_files(staging)[:2]:  # oci-layout, index.json
                files[name] = _write(staging / name, (staging / name).read_bytes())
        doc = manifest.document(
            "export",
            entries,
            collections=[cc.slug for cc in config.codecollections],
            catalog=rows,
            extra={"transfer": transfer},
        )
        (staging / archive.MANIFEST).write_bytes(manifest.dumps(doc))
        names = [archive.MANIFEST]
        if sign_key is not None:
            from cccatalog.signing import sign

            sign(staging / archive.MANIFEST, sign_key, environ=environ)
            names.append(archive.SIGNATURE)
        names += [archive.CATALOG, archive.IMAGES, *(r.bundle for r in repos if r.bundle)]
        names += transfer_images.layout_files(staging)
        mtime = int(parse_rfc3339(doc["created_at"]).timestamp())
        size = archive.write_archive(out, staging, names, mtime=mtime)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    since_shown = str(since) if since is not None else None
    named = len(_images_txt(rows).splitlines())
    return ExportResult(
        out, size, sign_key is not None, since_shown, repos, named, len(rows), carried if images else None
    )


def _export_repo(
    config: Config, git: Git, layout: Layout, slug: str, *, site: manifest.Manifest | None, staging: Path
) -> tuple[manifest.RepoManifest, RepoExport]:
    repo = layout.repo(slug)
    cc = config.collection(slug)
    url = strip_url_credentials(cc.git_url) if cc and cc.git_url else None
    with file_lock(layout.lock(slug), timeout=config.git.lock_timeout_seconds, what=f"mirror {slug}"):
        entry = manifest.repo_manifest(git, repo, slug, upstream_url=url)
        if entry is None:
            raise UsageError(f"{slug}: the mirror at {repo} is not complete; run cccatalog sync first")
        have = site.repos.get(slug) if site is not None else None
        name = archive.bundle_name(slug)
        out = staging / name
        timeout = config.git.clone_timeout_seconds
        if have is None:
            bundles.create_bundle(git, repo, out, refs=sorted(entry.refs), exclude=(), timeout=timeout)
            return entry, _bundled(slug, "full", len(entry.refs), name, out)
        changed = sorted(n for n, sha in entry.refs.items() if have.refs.get(n) != sha)
        moved = len(changed) + sum(n not in entry.refs for n in have.refs)
        if not moved and have.default_branch == entry.default_branch:
            return entry, RepoExport(slug, "unchanged", 0)
        # Only what this mirror has objects for can be a prerequisite: rev-list cannot exclude the
        # history of a commit it does not have (a force-pushed branch's old tip, pruned here).
        types = bundles.object_types(git, repo, have.refs.values())
        exclude = sorted(sha for sha, kind in types.items() if kind in ("commit", "tag"))
        if changed and bundles.create_bundle(git, repo, out, refs=changed, exclude=exclude, timeout=timeout):
            return entry, _bundled(slug, "incremental", moved, name, out)
        return entry, RepoExport(slug, "refs", moved)


def _bundled(slug: str, kind: str, moved: int, name: str, path: Path) -> RepoExport:
    header = bundles.read_header(path)
    kind = "full" if not header.prerequisites else kind
    return RepoExport(
        slug, kind, moved, name, archive.file_digest(path), path.stat().st_size, header.prerequisites
    )


def _catalog_rows(config: Config) -> dict[str, list[ImageRefRecord]]:
    """The newest build of every ref of every collection, from this host's state file (none yet: no rows)."""
    if config.state.url is None and not config.state.path.is_file():
        return {}
    from cccatalog.catalog.store import Store

    with Store.for_config(config) as store:
        found = {
            cc.slug: [r for r in store.list_image_refs(cc.slug) if r.image_tag]
            for cc in config.codecollections
        }
    return {slug: rows for slug, rows in found.items() if rows}


def _catalog_json(rows: Mapping[str, list[ImageRefRecord]]) -> bytes:
    collections = {slug: [row_to_json(r) for r in found] for slug, found in sorted(rows.items())}
    return (json.dumps({"format": CATALOG_FORMAT, "collections": collections}, indent=2) + "\n").encode()


def _images_txt(rows: Mapping[str, list[ImageRefRecord]]) -> bytes:
    refs = {ref for found in rows.values() for r in found if (ref := image_reference(r))}
    return "".join(f"{ref}\n" for ref in sorted(refs)).encode()


def _write(path: Path, data: bytes) -> dict[str, Any]:
    path.write_bytes(data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
