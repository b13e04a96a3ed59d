"""A whole sync run (git half, image half) as one function, for the CLI now and for serve's admin API
and scheduler later. It decides nothing about output: it returns what happened.

The image half (httpx and the registry client) is imported only when a run polls images, so a
`sync --no-images` does not pay for it at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cccatalog.config import Config
from cccatalog.errors import LockBusy
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.locks import file_lock
from cccatalog.gitmirror.sync import Action, MirrorSyncer, RepoResult, RepoTask, SyncOptions, plan_sync
from cccatalog.redact import Redactor

if TYPE_CHECKING:
    from cccatalog.catalog.images import ImageSyncResult
    from cccatalog.catalog.store import Store
    from cccatalog.oci.cache import BlobCache


@dataclass(frozen=True, slots=True)
class SyncRequest:
    git: bool = True
    images: bool = True
    only: tuple[str, ...] = ()
    jobs: int | None = None
    no_wait: bool = False
    # why a half is skipped as a whole: set by `run_locks` when another run holds it and no_wait
    skip_git: str | None = None
    skip_images: str | None = None


@dataclass(slots=True)
class SyncReport:
    git: list[RepoResult] = field(default_factory=list)
    images: list[ImageSyncResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.git) or any(r.failed for r in self.images)


def run_lock_path(config: Config, half: str) -> Path:
    """The run lock of one half of a sync (`git`, `images`), beside the state file (always writable):
    a cron `sync`, serve's scheduler and an admin job never run the same half at the same time (a git
    sync of named repos only takes their repo locks: see `run_locks`)."""
    return config.state.path.parent / "locks" / f"sync-{half}.lock"


log = logging.getLogger("cccatalog.sync")


@contextmanager
def run_locks(config: Config, request: SyncRequest) -> Iterator[SyncRequest]:
    """Hold the run locks `request` needs, waiting up to git.lock_timeout_seconds (0 with no_wait);
    yields the request to run, with the halves another run holds marked skipped under no_wait.

    A git run of every repo takes the git run lock; an `--only` run takes only the locks of the repos
    it names (per repo, in `MirrorSyncer`), so it waits for or skips just the repos that are busy, not
    a whole run of others. The image half has no per-collection lock: every run takes its run lock.
    """
    wait = 0 if request.no_wait else config.git.lock_timeout_seconds
    skipped: dict[str, str] = {}
    with ExitStack() as stack:
        for half, wanted in (("git", request.git and not request.only), ("images", request.images)):
            if not wanted:
                continue

            def waiting(pid: int | None, half: str = half) -> None:
                by = f" (pid {pid})" if pid else ""
                log.warning(
                    "waiting for another %s sync%s to finish, up to %.0fs (git.lock_timeout_seconds)",
                    half, by, wait,
                )  # fmt: skip

            lock = run_lock_path(config, half)
            try:
                stack.enter_context(file_lock(lock, timeout=wait, what=f"the {half} sync", on_wait=waiting))
            except LockBusy as exc:
                if not request.no_wait:
                    raise
                skipped[half] = f"{exc}, which covers this one; skipped (--no-wait)"
        yield replace(request, skip_git=skipped.get("git"), skip_images=skipped.get("images"))


def image_cache(config: Config) -> BlobCache:
    """Registry documents are cached beside the state file: both belong to this host, not the image."""
    from cccatalog.oci.cache import BlobCache

    return BlobCache(config.state.path.parent / "oci-cache")


def run_sync(
    config: Config,
    store: Store,
    request: SyncRequest,
    *,
    redactor: Redactor,
    environ: Mapping[str, str],
    run_git: Callable[[MirrorSyncer, list[RepoTask]], list[RepoResult]] | None = None,
) -> SyncReport:
    """Sync what `request` asks for. `run_git` lets the caller wrap the git half (progress bars)."""
    report = SyncReport()
    tasks = plan_sync(config, only=request.only) if request.git else []  # validates --only either way
    store.upsert_collections(config.codecollections)
    if request.git and config.git.enabled:
        syncer = MirrorSyncer(
            git=Git(redactor=redactor),
            layout=Layout(config.git.data_dir),
            options=SyncOptions.from_config(config, jobs=request.jobs, no_wait=request.no_wait),
            environ=environ,
            store=store,
        )
        if request.skip_git:
            report.git = [
                RepoResult(t.slug, Action.SKIPPED, t.display_url, error=request.skip_git) for t in tasks
            ]
        else:
            report.git = run_git(syncer, tasks) if run_git else syncer.run(tasks)
    if request.images:
        from cccatalog.catalog.images import ImageSyncer, ImageSyncResult

        images = ImageSyncer(config, store, cache=image_cache(config), environ=environ, redactor=redactor)
        planned = images.plan(request.only)
        if request.skip_images:
            report.images = [ImageSyncResult(cc.slug, cc.source, note=request.skip_images) for cc in planned]
        else:
            report.images = images.run(planned, jobs=request.jobs or config.git.parallelism)
    return report


def reaches_network(config: Config, request: SyncRequest) -> bool:
    """Would this sync leave the host? (the air-gap guard, `git.runtime_sync: false`, refuses it).
    Static sources never do; git mirrors and `oci` registries do."""
    if request.git and config.git.enabled and plan_sync(config, only=request.only):
        return True
    sources = {s.name: s for s in config.sources}
    return request.images and any(
        sources[cc.source].type == "oci" and cc.image_registry
        for cc in config.codecollections
        if not request.only or cc.slug in request.only
    )


def check_only(config: Config, only: Sequence[str]) -> None:
    """--only must name configured collections (raises UsageError otherwise)."""
    plan_sync(config, only=only, ignore_enabled=True)


_CHANGED = ("cloned", "rebuilt", "updated")


def git_summary(config: Config, report: SyncReport, *, skipped: str | None = None) -> dict[str, object]:
    """The predecessor's sync-git answer: {enabled, runtime_sync, repos_processed, repos_updated, errors}."""
    summary: dict[str, object] = {
        "enabled": config.git.enabled,
        "runtime_sync": config.git.runtime_sync,
        "repos_processed": len(report.git),
        "repos_updated": sum(r.action.value in _CHANGED for r in report.git),
        "errors": [{"slug": r.slug, "error": r.error} for r in report.git if r.failed],
        "repos": [
            {
                "slug": r.slug,
                "action": r.action.value,
                "head_commit": r.head_commit,
                "duration_s": r.duration_s,
                "note": r.note,
            }
            for r in report.git
        ],
    }
    if skipped:
        summary["skipped"] = skipped
    return summary


def catalog_summary(report: SyncReport, *, skipped: str | None = None) -> dict[str, object]:
    """The predecessor's sync-catalog answer: collections processed, refs upserted and deactivated, errors."""
    summary: dict[str, object] = {
        "collections_processed": len(report.images),
        "refs_upserted": sum(r.refs for r in report.images),
        "refs_deactivated": sum(r.deactivated for r in report.images),
        "errors": [{"slug": r.slug, "error": r.error} for r in report.images if r.failed],
    }
    if skipped:
        summary["skipped"] = skipped
    return summary
