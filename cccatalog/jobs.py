"""A whole sync run (git half, image half) as one function, for the CLI now and for serve's admin API
and scheduler later. It decides nothing about output: it returns what happened."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cccatalog.catalog.images import ImageSyncer, ImageSyncResult
from cccatalog.catalog.store import Store
from cccatalog.config import Config
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.sync import MirrorSyncer, RepoResult, RepoTask, SyncOptions, plan_sync
from cccatalog.oci.cache import BlobCache
from cccatalog.redact import Redactor


@dataclass(frozen=True, slots=True)
class SyncRequest:
    git: bool = True
    images: bool = True
    only: tuple[str, ...] = ()
    jobs: int | None = None
    no_wait: bool = False


@dataclass(slots=True)
class SyncReport:
    git: list[RepoResult] = field(default_factory=list)
    images: list[ImageSyncResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.git) or any(r.failed for r in self.images)


def image_cache(config: Config) -> BlobCache:
    """Registry documents are cached beside the state file: both belong to this host, not the image."""
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
        report.git = run_git(syncer, tasks) if run_git else syncer.run(tasks)
    if request.images:
        images = ImageSyncer(config, store, cache=image_cache(config), environ=environ, redactor=redactor)
        report.images = images.run(images.plan(request.only), jobs=request.jobs or config.git.parallelism)
    return report


def check_only(config: Config, only: Sequence[str]) -> None:
    """--only must name configured collections (raises UsageError otherwise)."""
    plan_sync(config, only=only, ignore_enabled=True)
