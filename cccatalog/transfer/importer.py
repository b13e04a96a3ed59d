"""`cccatalog import`: apply a checked update to a running site, one repo at a time, under its lock.

An existing mirror gets the bundle's objects first (no ref moves, so clients go on cloning the old
refs), then every ref in one transaction, then the same maintenance as `sync` (one pack, bitmap,
commit-graph). A repo the site lacks is built from its full bundle in a temporary directory and
published like a first clone. Then the state (head, time, last action "imported"), the carried images
into each collection's site registry (cccatalog.transfer.images), the catalog rows,
and last the export's own manifest (and signature) in `data_dir`, which `serve` checks its mirrors
against at start-up. Every step can be repeated: an import that was killed is completed by the next
one, and an update already applied changes nothing at all.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cccatalog import manifest
from cccatalog.atomic import write_atomic
from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.rows import catalog_digest
from cccatalog.catalog.store import Store
from cccatalog.config import Config
from cccatalog.errors import CCCatalogError, GitError, UsageError
from cccatalog.gitmirror import bundles
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.locks import file_lock
from cccatalog.gitmirror.mirror import LocalState, Mirror
from cccatalog.oci.copy import CopyProgress
from cccatalog.paths import require_writable_dir
from cccatalog.redact import strip_url_credentials
from cccatalog.transfer import order
from cccatalog.transfer.images import ImageImport, failed_slugs, push_images
from cccatalog.transfer.staging import staging_dir
from cccatalog.transfer.verify import RepoPlan, Update, check_update


@dataclass(frozen=True, slots=True)
class RepoImport:
    slug: str
    action: str  # cloned, updated, unchanged, failed
    head_commit: str | None = None
    refs_changed: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class ImportResult:
    archive: Path
    signed_by: str | None
    repos: list[RepoImport] = field(default_factory=list)
    catalog_replaced: list[str] = field(default_factory=list)
    manifest: Path | None = None
    images: list[ImageImport] | None = None  # None: the update carried none

    @property
    def failed(self) -> bool:
        return any(r.action == "failed" for r in self.repos) or bool(failed_slugs(self.images or []))

    @property
    def changed(self) -> bool:
        pushed = any(i.action == "pushed" for i in self.images or [])
        return pushed or bool(self.catalog_replaced) or any(r.action != "unchanged" for r in self.repos)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "archive": str(self.archive),
            "signed_by": self.signed_by,
            "changed": self.changed,
            "repos": [r.to_json() for r in self.repos],
            "catalog_replaced": list(self.catalog_replaced),
            "images": None if self.images is None else [i.to_json() for i in self.images],
            "manifest": str(self.manifest) if self.manifest else None,
        }


def import_update(
    config: Config,
    git: Git,
    path: Path,
    *,
    allowed_signers: Path | None,
    signer: str | None,
    allow_unsigned: bool,
    environ: Mapping[str, str],
    progress: Callable[[CopyProgress], None] | None = None,
    allow_downgrade: bool = False,
) -> ImportResult:
    """Check the update at `path` whole (UsageError, nothing changed), then apply it."""
    allowed = allowed_signers or config.transfer.allowed_signers
    signer = signer or config.transfer.signer
    if allowed is None and not allow_unsigned:
        raise UsageError(
            "no allowed signers to check the update against: pass --allowed-signers FILE or set "
            "transfer.allowed_signers (or --allow-unsigned to import an update nobody signed)"
        )
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    path = path.absolute()
    require_writable_dir(config.git.data_dir, setting="git.data_dir")
    require_writable_dir(config.state.local_dir, setting=config.state.setting)
    with staging_dir(config.git.data_dir) as staging:
        update = check_update(
            config,
            git,
            path,
            staging,
            allowed_signers=allowed,
            signer=signer,
            allow_unsigned=allow_unsigned,
            environ=environ,
            allow_downgrade=allow_downgrade,
        )
        lock = config.state.local_dir / "locks" / "import.lock"
        with file_lock(lock, timeout=config.git.lock_timeout_seconds, what="another import"):
            return _apply(config, git, path, update, environ=environ, progress=progress)


def _apply(
    config: Config,
    git: Git,
    path: Path,
    update: Update,
    *,
    environ: Mapping[str, str],
    progress: Callable[[CopyProgress], None] | None,
) -> ImportResult:
    result = ImportResult(path, update.signed_by)
    layout = Layout(config.git.data_dir)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    # before any ref moves: a killed import is completed by this update, never undone by an older one
    order.record(layout.data_dir, update.order, update.manifest_bytes)
    with Store.for_config(config) as store:
        for plan in update.repos:
            result.repos.append(_apply_repo(config, git, layout, store, plan))
        # images before the rows that name them: a collection whose images did not all arrive
        # keeps its old rows
        rows = dict(update.catalog)
        if update.images is not None:
            result.images = push_images(
                config, update.images, environ=environ, redactor=git.redactor, progress=progress
            )
            rows = {slug: found for slug, found in rows.items() if slug not in failed_slugs(result.images)}
        result.catalog_replaced = _replace_catalog(config, store, rows)
    if not result.failed:
        result.manifest = _write_site_manifest(layout.data_dir, update)
    return result


def _apply_repo(config: Config, git: Git, layout: Layout, store: Store, plan: RepoPlan) -> RepoImport:
    started = datetime.now(UTC)
    slug = plan.slug
    cc = config.collection(slug)
    url = strip_url_credentials(cc.git_url) if cc and cc.git_url else ""
    try:
        with file_lock(layout.lock(slug), timeout=config.git.lock_timeout_seconds, what=f"mirror {slug}"):
            layout.remove_stale_temps(slug)
            outcome = _update_locked(config, git, layout, plan)
    except (CCCatalogError, OSError) as exc:
        error = git.redactor(f"import: {exc}")
        store.record_mirror_failure(
            slug, upstream_url=url, action="failed", error=error, attempted_at=started
        )
        return RepoImport(slug, "failed", error=error)
    target = plan.target
    known = store.get_mirror(slug)
    if outcome.action != "unchanged" or known is None or known.refs_fingerprint != target.refs_fingerprint:
        store.record_mirror_success(
            slug,
            upstream_url=url,
            action="imported",
            head_commit=target.head_commit or "",
            default_branch=target.default_branch or "",
            refs_fingerprint=target.refs_fingerprint,
            attempted_at=started,
            finished_at=datetime.now(UTC),
        )
    return outcome


def _update_locked(config: Config, git: Git, layout: Layout, plan: RepoPlan) -> RepoImport:
    repo, target = layout.repo(plan.slug), plan.target
    timeout = config.git.clone_timeout_seconds
    mirror = Mirror(git, repo)
    local = mirror.inspect()  # again, under the lock: what the check saw may have moved since
    if local is None:
        return _publish_from_bundle(config, git, layout, plan, rebuild=repo.exists())
    if local.refs == target.refs and local.head == target.head:
        if not _needs_maintenance(repo):
            return RepoImport(plan.slug, "unchanged", local.head_commit)
        mirror.optimize(timeout)  # a killed import moved the refs but did not finish the upkeep
        return RepoImport(plan.slug, "updated", local.head_commit)
    if plan.bundle is not None:
        bundles.unbundle(git, repo, plan.bundle, timeout=timeout)
    changed = _move_refs(git, mirror, local, target, timeout=timeout)
    mirror.optimize(timeout)
    return RepoImport(plan.slug, "updated", target.head_commit, changed)


def _move_refs(
    git: Git, mirror: Mirror, local: LocalState, target: manifest.RepoManifest, *, timeout: float
) -> int:
    """Every ref to its target in one transaction; HEAD beside it, on the side of the transaction
    where the branch it names exists, so HEAD never names a missing branch."""
    types = bundles.object_types(git, mirror.path, target.refs.values())
    if missing := sorted(sha for sha, kind in types.items() if kind == "missing"):
        raise GitError(f"the update does not carry object {missing[0]}; no ref was moved")
    head = target.head
    if head and head != local.head and head in local.refs:
        mirror.set_head(head)
    changed = bundles.update_refs(git, mirror.path, local.refs, target.refs, timeout=timeout)
    if head and head != local.head and head not in local.refs:
        mirror.set_head(head)
    return changed


def _publish_from_bundle(
    config: Config, git: Git, layout: Layout, plan: RepoPlan, *, rebuild: bool
) -> RepoImport:
    """A mirror this site lacks (or whose copy is damaged), built from a full bundle beside the
    published repos and renamed into place, as a first clone is."""
    if plan.bundle is None or bundles.read_header(plan.bundle).prerequisites:
        raise UsageError("this site has no complete mirror of it, and the update is not a full one")
    cc = config.collection(plan.slug)
    tmp = layout.new_temp_repo(plan.slug)
    timeout = config.git.clone_timeout_seconds
    try:
        mirror = Mirror(git, tmp)
        mirror.init(cc.git_url if cc and cc.git_url else "", config.git.refs)
        bundles.unbundle(git, tmp, plan.bundle, timeout=timeout)
        bundles.update_refs(git, tmp, {}, plan.target.refs, timeout=timeout)
        if plan.target.head:
            mirror.set_head(plan.target.head)
        mirror.verify(timeout)
        mirror.optimize(timeout)
        layout.publish(tmp, plan.slug)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    action = "rebuilt" if rebuild else "cloned"
    return RepoImport(plan.slug, action, plan.target.head_commit, len(plan.target.refs))


def _needs_maintenance(repo: Path) -> bool:
    """Not as `optimize` leaves a mirror: one pack with a bitmap, every ref packed."""
    packs = list((repo / "objects" / "pack").glob("*.pack"))
    if len(packs) != 1 or not packs[0].with_suffix(".bitmap").is_file():
        return True
    return any(p.is_file() for p in (repo / "refs").rglob("*"))


def _replace_catalog(config: Config, store: Store, rows: Mapping[str, Sequence[ImageRefRecord]]) -> list[str]:
    """The update's rows of each configured collection, pointing at this site's registry when its
    config names one (images are copied there with tags and digests unchanged). A collection the
    update has no rows for keeps its own, as a poll that listed nothing does."""
    replaced = []
    upserted = False
    now = datetime.now(UTC)
    for cc in config.codecollections:
        found = rows.get(cc.slug)
        if not found:
            continue
        mapped = [dataclasses.replace(r, image_registry=cc.image_registry or r.image_registry) for r in found]
        if catalog_digest({cc.slug: store.list_image_refs(cc.slug)}) == catalog_digest({cc.slug: mapped}):
            continue
        if not upserted:
            store.upsert_collections(config.codecollections)
            upserted = True
        store.replace_image_refs(cc.slug, mapped, synced_at=now, deactivate_missing=True)
        replaced.append(cc.slug)
    return replaced


def _write_site_manifest(data_dir: Path, update: Update) -> Path:
    """The export's manifest (and signature) become this site's: what every mirror now is."""
    target = data_dir / manifest.MANIFEST
    signature = data_dir / manifest.SIGNATURE
    same_sig = signature.read_bytes() == update.signature if signature.is_file() else update.signature is None
    if target.is_file() and target.read_bytes() == update.manifest_bytes and same_sig:
        return target
    if update.signature is None:
        signature.unlink(missing_ok=True)
    else:
        write_atomic(signature, update.signature)
    write_atomic(target, update.manifest_bytes)
    return target
