"""The one manifest format: what a site has (or will have) — per repo every ref, plus the catalog.

`bake` writes it beside the mirrors, `cccatalog manifest` and `GET /api/v1/manifest` describe a
running site with it, `export` puts one (with its bundles) at the top of an update, and `serve` checks
the mirrors against the one in `data_dir` at start-up. Versioned by `"format"`; a manifest without one
is a bake manifest of an earlier cccatalog, still read (its repos and refs are the same shape).

    {"format": "cccatalog-manifest/1", "kind": "site" | "bake" | "export",
     "cccatalog_version", "created_at", "collections": [slug, ...],
     "repos": [{"slug", "upstream_url", "default_branch", "head_commit", "refs": {ref: sha},
                "refs_fingerprint"}],
     "catalog": {"digest": "sha256:...", "refs": {slug: {ref: image_tag}}} | null,
     "images": {slug: {"repository", "tags": {tag: digest}, "manifests": [...], "blobs": [...]}}
               (`cccatalog manifest` of a site: what its registry holds; cccatalog.transfer.images),
     "transfer": {...}  (export only: see cccatalog.transfer)}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cccatalog import __version__
from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.rows import catalog_digest
from cccatalog.config import Config
from cccatalog.errors import UsageError
from cccatalog.gitmirror.bundles import is_refname, is_sha
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import Mirror, fingerprint
from cccatalog.gitmirror.servable import mirrored_slugs
from cccatalog.names import is_valid_slug
from cccatalog.redact import strip_url_credentials
from cccatalog.timestamps import parse_rfc3339

if TYPE_CHECKING:
    from cccatalog.catalog.store import Store

FORMAT = "cccatalog-manifest/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
KINDS = ("site", "bake", "export")


@dataclass(frozen=True, slots=True)
class RepoManifest:
    slug: str
    default_branch: str | None
    head_commit: str | None
    refs: dict[str, str]
    upstream_url: str | None = None
    pack_size_bytes: int | None = None  # bake records it

    @property
    def head(self) -> str | None:
        return f"refs/heads/{self.default_branch}" if self.default_branch else None

    @property
    def refs_fingerprint(self) -> str:
        return fingerprint(self.head, self.refs)

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "upstream_url": self.upstream_url,
            "default_branch": self.default_branch,
            "head_commit": self.head_commit,
            "refs": dict(sorted(self.refs.items())),
            "refs_fingerprint": self.refs_fingerprint,
        } | ({} if self.pack_size_bytes is None else {"pack_size_bytes": self.pack_size_bytes})


@dataclass(frozen=True, slots=True)
class Manifest:
    kind: str  # site, bake, export; "bake" also for a manifest without a format
    repos: dict[str, RepoManifest]
    collections: tuple[str, ...] | None  # None: an earlier cccatalog's bake manifest does not say
    catalog_digest: str | None
    document: dict[str, Any]


def repo_manifest(git: Git, path: Path, slug: str, *, upstream_url: str | None) -> RepoManifest | None:
    """The refs of the mirror at `path`, or None when it is missing or not complete."""
    state = Mirror(git, path, foreign=True).inspect()
    if state is None:
        return None
    branch = (state.head or "").removeprefix("refs/heads/") or None
    return RepoManifest(slug, branch, state.head_commit, dict(state.refs), upstream_url)


def document(
    kind: str,
    repos: Sequence[RepoManifest],
    *,
    collections: Sequence[str] | None,
    catalog: Mapping[str, Sequence[ImageRefRecord]] | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "cccatalog_version": __version__,
        "created_at": now,
    }
    if collections is not None:
        doc["collections"] = sorted(collections)
    doc["repos"] = [r.to_json() for r in sorted(repos, key=lambda r: r.slug)]
    doc["catalog"] = None
    if catalog is not None:
        shown = {
            slug: {r.ref: r.image_tag for r in sorted(rows, key=lambda r: r.ref) if r.is_active}
            for slug, rows in sorted(catalog.items())
        }
        doc["catalog"] = {
            "digest": catalog_digest(catalog),
            "refs": {slug: refs for slug, refs in shown.items() if refs},
        }
    doc.update(extra or {})
    return doc


def dumps(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def parse(data: bytes, *, source: str) -> Manifest:
    """A manifest from its bytes; UsageError naming `source` and the field when it is not one."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{source}: not a cccatalog manifest (not JSON)") from None
    except RecursionError:
        raise UsageError(f"{source}: not a cccatalog manifest (JSON nested too deeply)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("repos"), list):
        raise UsageError(f"{source}: not a cccatalog manifest (no repos list)")
    fmt = doc.get("format")
    if fmt is not None and fmt != FORMAT:
        raise UsageError(
            f"{source}: manifest format {fmt!r} is not {FORMAT!r} (written by a newer cccatalog?)"
        )
    kind = doc.get("kind", "bake") if fmt else "bake"
    if kind not in KINDS:
        raise UsageError(f"{source}: unknown manifest kind {kind!r}")
    repos: dict[str, RepoManifest] = {}
    for i, entry in enumerate(doc["repos"]):
        repo = _repo(entry, where=f"{source}: repos[{i}]")
        if repo.slug in repos:
            raise UsageError(f"{source}: repos[{i}]: {repo.slug} is listed twice")
        repos[repo.slug] = repo
    collections = doc.get("collections")
    if collections is not None and (
        not isinstance(collections, list)
        or not all(isinstance(s, str) and is_valid_slug(s) for s in collections)
    ):
        raise UsageError(f"{source}: collections: expected a list of slugs")
    catalog = doc.get("catalog")
    digest = catalog.get("digest") if isinstance(catalog, dict) else None
    return Manifest(
        kind,
        repos,
        tuple(collections) if collections is not None else None,
        digest if isinstance(digest, str) else None,
        doc,
    )


def _repo(entry: object, *, where: str) -> RepoManifest:
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: expected an object")
    slug, refs = entry.get("slug"), entry.get("refs")
    if not isinstance(slug, str) or not is_valid_slug(slug):
        raise UsageError(f"{where}.slug: expected a slug")
    if not isinstance(refs, dict) or not all(is_refname(k) and is_sha(v) for k, v in refs.items()):
        raise UsageError(f"{where}.refs: expected ref names mapped to object ids")
    branch = entry.get("default_branch")
    if branch is not None and not (isinstance(branch, str) and is_refname(f"refs/heads/{branch}")):
        raise UsageError(f"{where}.default_branch: expected a branch name")
    head = entry.get("head_commit")
    upstream = entry.get("upstream_url")
    return RepoManifest(
        slug,
        branch,
        head if is_sha(head) else None,
        dict(refs),
        upstream if isinstance(upstream, str) else None,
    )


def read(path: Path, *, what: str) -> tuple[bytes, Manifest]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or type(exc).__name__}") from None
    return data, parse(data, source=f"{what} {path}")


def site_manifest(config: Config, git: Git, store: Store | None) -> dict[str, Any]:
    """What this site has: every complete mirror of a configured collection, and the catalog."""
    repos = []
    layout = Layout(config.git.data_dir)
    for slug in sorted(mirrored_slugs(config, ignore_enabled=True)):
        cc = config.collection(slug)
        url = strip_url_credentials(cc.git_url) if cc and cc.git_url else None
        entry = repo_manifest(git, layout.repo(slug), slug, upstream_url=url)
        if entry is not None:
            repos.append(entry)
    slugs = [cc.slug for cc in config.codecollections]
    catalog = {slug: store.list_image_refs(slug) for slug in slugs} if store is not None else {}
    return document("site", repos, collections=slugs, catalog=catalog)


def baked_at(data_dir: Path) -> datetime | None:
    """When the manifest in `data_dir` was written (a bake, or the last import); None without a
    readable one. An earlier cccatalog's bake manifest names the time `baked_at`."""
    try:
        doc = json.loads((data_dir / MANIFEST).read_text(encoding="utf-8"))
        when = doc.get("created_at") or doc.get("baked_at")
        return parse_rfc3339(str(when))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def require_same_collections(config: Config, site: Manifest, *, what: str) -> None:
    """Refuse a site manifest of other collections than `config`'s: the import on that site would
    refuse the update made from it (transfer/verify.py), so say so before it is made."""
    if site.collections is None:  # an earlier cccatalog's bake manifest does not say
        return
    ours, theirs = {cc.slug for cc in config.codecollections}, set(site.collections)
    if ours == theirs:
        return
    parts = []
    if only_theirs := sorted(theirs - ours):
        parts.append(f"only on the site: {', '.join(only_theirs)}")
    if only_ours := sorted(ours - theirs):
        parts.append(f"only in {config.path.name}: {', '.join(only_ours)}")
    raise UsageError(
        f"{what}: the site has other collections than {config.path}: {'; '.join(parts)}; "
        "configure the same collections on both sides (the site's import would refuse this update)"
    )
