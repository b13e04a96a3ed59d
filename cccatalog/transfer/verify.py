"""Everything `import` checks before it changes anything, and the plan it then applies.

In order: the file begins with a manifest, which is signed by an allowed signer (unless
`--allow-unsigned`) before anything else of the file is unpacked; it is an export for the same
collections as this config; only then are the other members unpacked, each listed in the manifest,
of the size it gives (so what is written is bounded by what was signed) and with its sha256 (an image
blob's is its name); the carried images are the ones the layout names and each has an
image_registry here; the catalog rows parse; the update is not older than the last one this site
imported (`order`); and each repo's bundle builds on commits this site's mirror has (`git bundle
verify`), moves no branch back to an ancestor (`--allow-downgrade` to allow both) — or, for a repo
this site lacks, is a full one.
Each refusal is one line saying what is wrong and what to do; none of them leaves a trace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cccatalog import manifest
from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.rows import catalog_digest, row_from_json
from cccatalog.config import Config
from cccatalog.errors import GitError, UsageError
from cccatalog.gitmirror import bundles
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import LocalState, Mirror
from cccatalog.gitmirror.servable import mirrored_slugs
from cccatalog.names import is_valid_slug
from cccatalog.transfer import archive, order
from cccatalog.transfer import images as carried_images
from cccatalog.transfer.export import CATALOG_FORMAT

_SINCE_HINT = "on the connected side, export --since this site's manifest (cccatalog manifest -c {config})"


@dataclass(frozen=True, slots=True)
class RepoPlan:
    """One repo of an update: where it must end (`target`), the bundle that brings its objects, and
    what this site had when the import checked it (None: no complete mirror)."""

    target: manifest.RepoManifest
    bundle: Path | None
    local: LocalState | None

    @property
    def slug(self) -> str:
        return self.target.slug

    @property
    def done(self) -> bool:
        local = self.local
        return local is not None and local.refs == self.target.refs and local.head == self.target.head


@dataclass(frozen=True, slots=True)
class Update:
    """A checked update, ready to apply."""

    manifest_bytes: bytes
    signature: bytes | None
    signed_by: str | None
    repos: list[RepoPlan]
    catalog: dict[str, list[ImageRefRecord]]
    order: order.Order | None = None
    images: carried_images.ImagesPlan | None = None  # None: the update carries no images (--no-images)


def check_update(
    config: Config,
    git: Git,
    path: Path,
    staging: Path,
    *,
    allowed_signers: Path | None,
    signer: str | None,
    allow_unsigned: bool,
    environ: Mapping[str, str],
    allow_downgrade: bool = False,
) -> Update:
    head = archive.extract_head(path, staging)
    signed_by = _check_signature(
        path, head, allowed=allowed_signers, signer=signer, allow_unsigned=allow_unsigned, environ=environ
    )
    data = head[archive.MANIFEST].path.read_bytes()
    found = manifest.parse(data, source=f"{path}: {archive.MANIFEST}")
    if found.kind != "export":
        raise UsageError(f"{path}: not an update (its manifest is a {found.kind} manifest)")
    repos_info, files = _transfer_block(found.document, source=f"{path}: {archive.MANIFEST}")
    _check_collections(config, path, found, repos_info)
    ordered = order.of_manifest(data, found.document)
    order.check(path, ordered, order.last_imported(config.git.data_dir), allow_downgrade=allow_downgrade)
    transfer = found.document["transfer"]
    carried = carried_images.expected_members(transfer, source=f"{path}: {archive.MANIFEST}")
    expected = _expected_members(repos_info, files, carried)
    members = head | archive.extract_members(path, staging, {n: d["size"] for n, d in expected.items()})
    _check_members(path, members, expected)
    images_plan = carried_images.check_images(
        config, transfer, staging / carried_images.LAYOUT, source=f"{path}: {archive.MANIFEST}"
    )
    catalog = _read_catalog(path, members[archive.CATALOG].path, found.catalog_digest)
    layout = Layout(config.git.data_dir)
    plans = []
    for slug, info in sorted(repos_info.items()):
        bundle = members[info["bundle"]].path if info["bundle"] else None
        plans.append(
            _check_repo(config, git, layout, found.repos[slug], bundle, allow_downgrade=allow_downgrade)
        )
    signature = members[archive.SIGNATURE].path.read_bytes() if signed_by else None
    return Update(data, signature, signed_by, plans, catalog, order=ordered, images=images_plan)


def _check_signature(
    path: Path,
    members: Mapping[str, archive.Member],
    *,
    allowed: Path | None,
    signer: str | None,
    allow_unsigned: bool,
    environ: Mapping[str, str],
) -> str | None:
    from cccatalog.signing import SignatureError, verify

    signature = members.get(archive.SIGNATURE)
    if signature is None:
        if allow_unsigned:
            return None
        raise SignatureError(
            f"{path}: the update is not signed (no {archive.SIGNATURE}); export it with --sign-key, "
            "or pass --allow-unsigned to import it anyway"
        )
    if allowed is None:
        return None  # only reached with --allow-unsigned: nothing to check the signature against
    return verify(
        members[archive.MANIFEST].path,
        signature.path,
        allowed,
        signer=signer,
        environ=environ,
        what=f"{path}: {archive.MANIFEST}",
    )


def _transfer_block(
    doc: Mapping[str, Any], *, source: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The export's per-repo records and file digests, checked for shape (they are signed content,
    but a signature only says who wrote them)."""
    block = doc.get("transfer")
    if not isinstance(block, dict) or not isinstance(block.get("repos"), list):
        raise UsageError(f"{source}: no transfer block (not an export manifest)")
    files = block.get("files")
    if not isinstance(files, dict) or not all(
        _digest_ok(files.get(n)) for n in (archive.CATALOG, archive.IMAGES)
    ):
        raise UsageError(f"{source}: transfer.files: expected the sha256 and size of each file")
    repos: dict[str, dict[str, Any]] = {}
    listed = {r.get("slug") for r in doc.get("repos", []) if isinstance(r, dict)}
    for i, info in enumerate(block["repos"]):
        where = f"{source}: transfer.repos[{i}]"
        slug = info.get("slug") if isinstance(info, dict) else None
        if not isinstance(slug, str) or not is_valid_slug(slug) or slug not in listed or slug in repos:
            raise UsageError(f"{where}: expected a slug the manifest lists once")
        assert isinstance(info, dict)
        name = info.get("bundle")
        if name is not None and (name != archive.bundle_name(slug) or not _digest_ok(info)):
            raise UsageError(f"{where}: expected {archive.bundle_name(slug)} with its sha256 and size")
        repos[slug] = info
    if set(repos) != listed:
        raise UsageError(f"{source}: transfer.repos does not cover every repo of the manifest")
    return repos, files


def _digest_ok(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    sha, size = value.get("sha256"), value.get("size")
    return isinstance(sha, str) and len(sha) == 64 and isinstance(size, int) and size >= 0


def _check_collections(
    config: Config, path: Path, found: manifest.Manifest, repos: Mapping[str, Any]
) -> None:
    ours = {cc.slug for cc in config.codecollections}
    theirs = set(found.collections or ())
    mirrored, carried = set(mirrored_slugs(config, ignore_enabled=True)), set(repos)
    only_theirs = sorted((theirs - ours) | (carried - mirrored))
    only_ours = sorted((ours - theirs) | (mirrored - carried))
    if only_theirs or only_ours:
        parts = []
        if only_theirs:
            parts.append(f"only in the update: {', '.join(only_theirs)}")
        if only_ours:
            parts.append(f"only in {config.path.name}: {', '.join(only_ours)}")
        raise UsageError(
            f"{path} is for other collections (or other git_urls) than {config.path}: {'; '.join(parts)}. "
            "Configure the same collections on both sides, then export again"
        )


def _expected_members(
    repos: Mapping[str, Mapping[str, Any]], files: Mapping[str, Any], carried: Mapping[str, Any]
) -> dict[str, Mapping[str, Any]]:
    """Every member after the head the signed manifest lists: name -> {sha256, size}. A layout
    blob's listed sha256 is its name: checking it is checking the blob against its digest."""
    expected = {name: files[name] for name in (archive.CATALOG, archive.IMAGES)} | dict(carried)
    expected |= {
        name: info for name, info in files.items() if carried_images.is_member(name) and _digest_ok(info)
    }
    return expected | {info["bundle"]: info for info in repos.values() if info["bundle"]}


def _check_members(
    path: Path, members: Mapping[str, archive.Member], expected: Mapping[str, Mapping[str, Any]]
) -> None:
    for name, want in sorted(expected.items()):
        member = members.get(name)
        if member is None:
            raise UsageError(f"{path}: {name} is missing (the file is incomplete)")
        if member.sha256 != want["sha256"] or member.size != want["size"]:
            raise UsageError(
                f"{path}: {name} does not match its sha256 in the manifest (damaged or tampered)"
            )


def _read_catalog(path: Path, catalog: Path, digest: str | None) -> dict[str, list[ImageRefRecord]]:
    where = f"{path}: {archive.CATALOG}"
    try:
        doc = json.loads(catalog.read_bytes())
    except ValueError:
        raise UsageError(f"{where}: not JSON") from None
    except RecursionError:
        raise UsageError(f"{where}: JSON nested too deeply") from None
    collections = doc.get("collections") if isinstance(doc, dict) else None
    if doc.get("format") != CATALOG_FORMAT or not isinstance(collections, dict):
        raise UsageError(f"{where}: expected {CATALOG_FORMAT!r} with a collections object")
    rows: dict[str, list[ImageRefRecord]] = {}
    for slug, found in collections.items():
        if not is_valid_slug(slug) or not isinstance(found, list):
            raise UsageError(f"{where}: collections.{slug}: expected a list of rows")
        rows[slug] = [row_from_json(slug, r, where=f"{where}: {slug}[{i}]") for i, r in enumerate(found)]
    if digest is not None and catalog_digest(rows) != digest:
        raise UsageError(f"{where}: its rows do not match the manifest's catalog digest")
    return rows


def _check_repo(
    config: Config,
    git: Git,
    layout: Layout,
    target: manifest.RepoManifest,
    bundle: Path | None,
    *,
    allow_downgrade: bool,
) -> RepoPlan:
    slug, repo = target.slug, layout.repo(target.slug)
    local = Mirror(git, repo, foreign=True).inspect()
    plan = RepoPlan(target, bundle, local)
    if plan.done:
        return plan
    header = bundles.read_header(bundle) if bundle else None
    hint = _SINCE_HINT.format(config=config.path)
    if local is None:
        needs = header.prerequisites[0] if header and header.prerequisites else None
        if header is None or needs:
            what = f"it builds on commit {needs}" if needs else "it carries no objects for it"
            raise UsageError(
                f"{slug}: this site has no complete mirror of it, and the update is not a full one "
                f"({what}); {hint}"
            )
        return plan
    if not allow_downgrade:
        moved = {n: sha for n, sha in target.refs.items() if local.refs.get(n) not in (None, sha)}
        present = bundles.object_types(git, repo, moved.values(), foreign=True)
        if back := order.rewinds(git, repo, local.refs, moved, present):
            raise UsageError(order.rewind_error(slug, back, local.refs, target.refs))
    carried = set(header.refs.values()) if header else set()
    wanted = set(header.prerequisites if header else ()) | (set(target.refs.values()) - carried)
    types = bundles.object_types(git, repo, wanted, foreign=True)
    if missing := sorted(sha for sha, kind in types.items() if kind == "missing"):
        raise UsageError(
            f"{slug}: this site's mirror lacks commit {missing[0]}, which the update builds on; {hint}"
        )
    if bundle is not None:
        try:
            bundles.verify_bundle(git, repo, bundle, timeout=config.git.clone_timeout_seconds)
        except GitError as exc:
            raise UsageError(f"{slug}: git bundle verify refused the update's bundle: {exc}") from None
    return plan
