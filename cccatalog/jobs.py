"""A whole sync run (git half, image half) as one function, for the CLI, serve's admin API and its
scheduler. It decides nothing about output: it returns what happened.

The air-gap guards: `git.runtime_sync: false` holds back git fetches (the predecessor's meaning, and
only that), `images.runtime_sync: false` holds back registry and upstream-catalog polls. `static`
sources are files and are never held back. The CLI refuses a run a guard would hold back (exit 2, with
the way out); the admin API and the scheduler run what the guards allow and report what was held back.

The image half (httpx and the registry client) is imported only when a run polls images, so a
`sync --no-images` does not pay for it at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cccatalog.config import Config
from cccatalog.errors import LockBusy, UsageError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.sync import (
    Action,
    MirrorSyncer,
    Record,
    RepoResult,
    RepoTask,
    SyncOptions,
    plan_sync,
)
from cccatalog.oci.cache import state_cache
from cccatalog.paths import require_writable_dir
from cccatalog.redact import Redactor
from cccatalog.runlocks import Locks

if TYPE_CHECKING:
    from cccatalog.catalog.images import ImageSyncResult
    from cccatalog.catalog.store import Store
    from cccatalog.destinations.run import Progress
    from cccatalog.destinations.sync import MirrorReport


@dataclass(frozen=True, slots=True)
class SyncRequest:
    git: bool = True
    images: bool = True
    # copy the newest builds to the destinations after the image half (serve runs that on its own)
    mirror: bool = True
    only: tuple[str, ...] = ()
    jobs: int | None = None
    no_wait: bool = False
    # past the air-gap guards (--allow-runtime-sync, ?allow_runtime_sync=true)
    allow_runtime_sync: bool = False
    # why a half is skipped as a whole: set by `run_locks` when another run holds it and no_wait
    skip_git: str | None = None
    skip_images: str | None = None


@dataclass(slots=True)
class SyncReport:
    git: list[RepoResult] = field(default_factory=list)
    images: list[ImageSyncResult] = field(default_factory=list)
    # Said once for the whole run (e.g. credentials that are not set): shown on stderr and in --json.
    warnings: list[str] = field(default_factory=list)
    # collections whose registry or upstream catalog images.runtime_sync kept this run from polling
    images_held_back: list[str] = field(default_factory=list)
    # what was copied to each destination (None: no destination, or the image half did not run)
    mirrors: MirrorReport | None = None

    @property
    def failed(self) -> bool:
        mirrors_failed = self.mirrors is not None and self.mirrors.failed
        return any(r.failed for r in self.git) or any(r.failed for r in self.images) or mirrors_failed

    def to_json(self) -> dict[str, object]:
        counts: dict[str, int] = {}
        for r in self.git:
            counts[r.action.value] = counts.get(r.action.value, 0) + 1
        return {
            "ok": not self.failed,
            "counts": counts,
            "repos": [r.to_json() for r in self.git],
            "images": [r.to_json() for r in self.images],
            "warnings": list(self.warnings),
            "images_held_back": list(self.images_held_back),
            "destinations": self.mirrors.to_json() if self.mirrors is not None else [],
        }


def run_lock_path(config: Config, half: str) -> Path:
    """The run lock of one half of a sync (`git`, `images`) of an SQLite state, beside the state file
    (always writable): a cron `sync`, serve's scheduler and an admin job never run the same half at the
    same time (a git sync of named repos only takes their repo locks: see `run_locks`). A PostgreSQL
    state locks in the database instead (`cccatalog.runlocks`)."""
    return config.state.local_dir / "locks" / f"sync-{half}.lock"


log = logging.getLogger("cccatalog.sync")


@contextmanager
def run_locks(config: Config, request: SyncRequest, store: Store | None = None) -> Iterator[SyncRequest]:
    """Hold the run locks `request` needs, waiting up to git.lock_timeout_seconds (0 with no_wait):
    files beside an SQLite state, advisory locks in a PostgreSQL `store`. Yields the request to run,
    with the halves another run holds marked skipped under no_wait.

    A git run of every repo takes the git run lock; an `--only` run takes only the locks of the repos
    it names (per repo, in `MirrorSyncer`), so it waits for or skips just the repos that are busy, not
    a whole run of others. The image half has no per-collection lock: every run takes its run lock.
    """
    wait = 0 if request.no_wait else config.git.lock_timeout_seconds
    locks = Locks.for_state(config, store)
    skipped: dict[str, str] = {}
    with ExitStack() as stack:
        for half, wanted in (("git", request.git and not request.only), ("images", request.images)):
            if not wanted:
                continue

            def waiting(pid: int | None, half: str = half) -> None:
                by = f" (pid {pid})" if pid else ""
                log.warning(
                    "waiting for another %s sync%s to finish, up to %.0fs (git.lock_timeout_seconds)",
                    half,
                    by,
                    wait,
                )

            try:
                stack.enter_context(locks.run(half).hold(timeout=wait, on_wait=waiting))
            except LockBusy as exc:
                if not request.no_wait:
                    raise
                skipped[half] = f"{exc}, which covers this one; skipped (--no-wait)"
        yield replace(request, skip_git=skipped.get("git"), skip_images=skipped.get("images"))


def recorder(store: Store) -> Record:
    """What the git half hands each repo's outcome to: the state file (skipped repos never reach it).
    A failure keeps what the last success recorded (head, time); its error must be redacted already."""

    def record(result: RepoResult, attempted_at: datetime) -> None:
        if result.failed:
            store.record_mirror_failure(
                result.slug,
                upstream_url=result.upstream_url,
                action=result.action.value,
                error=result.error or "unknown error",
                attempted_at=attempted_at,
            )
        else:
            store.record_mirror_success(
                result.slug,
                upstream_url=result.upstream_url,
                action=result.action.value,
                head_commit=result.head_commit or "",
                default_branch=result.default_branch or "",
                refs_fingerprint=result.refs_fingerprint or "",
                attempted_at=attempted_at,
                finished_at=datetime.now(UTC),
            )

    return record


def run_sync(
    config: Config,
    store: Store,
    request: SyncRequest,
    *,
    redactor: Redactor,
    environ: Mapping[str, str],
    run_git: Callable[[MirrorSyncer, list[RepoTask]], list[RepoResult]] | None = None,
    copy_progress: Progress | None = None,
) -> SyncReport:
    """Sync what `request` asks for. `run_git` lets the caller wrap the git half (progress bars),
    `copy_progress` follows the image copies to destinations."""
    report = SyncReport()
    tasks = plan_sync(config, only=request.only) if request.git else []  # validates --only either way
    store.upsert_collections(config.codecollections)
    if request.git and config.git.enabled:
        syncer = MirrorSyncer(
            git=Git(redactor=redactor),
            layout=Layout(config.git.data_dir),
            options=SyncOptions.from_config(config, jobs=request.jobs, no_wait=request.no_wait),
            environ=environ,
            record=recorder(store),
        )
        if request.skip_git:
            report.git = [
                RepoResult(t.slug, Action.SKIPPED, t.display_url, error=request.skip_git) for t in tasks
            ]
        else:
            report.git = run_git(syncer, tasks) if run_git else syncer.run(tasks)
    if request.images:
        from cccatalog.catalog.images import ImageSyncer, ImageSyncResult

        images = ImageSyncer(config, store, cache=state_cache(config), environ=environ, redactor=redactor)
        report.images_held_back = [] if images_allowed(config, request) else held_images(config, request)
        planned = [cc for cc in images.plan(request.only) if cc.slug not in report.images_held_back]
        if request.skip_images:
            report.images = [ImageSyncResult(cc.slug, cc.source, note=request.skip_images) for cc in planned]
        else:
            report.images = images.run(planned, jobs=request.jobs or config.git.parallelism)
        # After the catalog half, which decides the builds; a held-back image half copies nothing either.
        if (
            config.destinations
            and request.mirror
            and not request.skip_images
            and images_allowed(config, request)
        ):
            from cccatalog.destinations.sync import run_mirrors
            from cccatalog.runlocks import Locks

            report.mirrors = run_mirrors(
                config,
                store,
                environ=environ,
                redactor=redactor,
                only_slugs=request.only,
                progress=copy_progress,
                locks=Locks.for_state(config, store),
            )
    return report


def git_allowed(config: Config, request: SyncRequest) -> bool:
    return config.git.runtime_sync or request.allow_runtime_sync


def images_allowed(config: Config, request: SyncRequest) -> bool:
    return config.images.runtime_sync or request.allow_runtime_sync


def held_git(config: Config, request: SyncRequest) -> list[str]:
    """Repos the git half would fetch that git.runtime_sync keeps this request from fetching."""
    if not request.git or not config.git.enabled or git_allowed(config, request):
        return []
    return [task.slug for task in plan_sync(config, only=request.only)]


def held_images(config: Config, request: SyncRequest) -> list[str]:
    """Collections the image half would poll over the network (a registry, another catalog) that
    images.runtime_sync keeps this request from polling. `static` sources are never held back."""
    if not request.images or images_allowed(config, request):
        return []
    held = []
    for cc in config.codecollections:
        source = config.source(cc.source)
        if source is None or (request.only and cc.slug not in request.only):
            continue
        if (source.type == "oci" and cc.image_registry) or (
            source.type == "upstream" and source.upstream_for(cc)
        ):
            held.append(cc.slug)
    return held


def check_air_gap(config: Config, request: SyncRequest, *, allow: bool) -> SyncRequest:
    """The request as the CLI runs it: refused (UsageError, exit 2) when an air-gap guard would hold
    back part of it, saying how to run what is allowed; with `allow`, marked as past the guards."""
    request = replace(request, allow_runtime_sync=allow)
    problems = []
    if held_git(config, request):
        problems.append(
            "git.runtime_sync is false: this host must not fetch from git upstreams "
            "(--no-git refreshes only the image catalog)"
        )
    if held := held_images(config, request):
        named = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        problems.append(
            "images.runtime_sync is false: this host must not poll registries or other catalogs "
            f"({named} would be polled); --no-images or --only narrow the run"
        )
    if problems:
        raise UsageError(
            f"{config.path}: {'; '.join(problems)}. Pass --allow-runtime-sync to reach them anyway."
        )
    return request


def nothing_to_sync(config: Config, request: SyncRequest) -> str | None:
    """Why this sync would do nothing at all, or None. Such a run writes nothing (no state, no locks)."""
    git = request.git and config.git.enabled and plan_sync(config, only=request.only)
    if git or (request.images and config.polled_collections(request.only)):
        return None
    reasons = []
    if request.git:
        reasons.append(
            "no CodeCollection has a git_url to mirror" if config.git.enabled else "git.enabled is false"
        )
    if request.images:
        reasons.append(
            "no CodeCollection has an image_registry (oci source) or a static_path (static source)"
        )
    return f"nothing to sync in {config.path}: " + "; ".join(reasons)


def credential_warnings(config: Config, environ: Mapping[str, str]) -> list[str]:
    """git.auth names variables that are unset or empty: the mirrors are fetched anonymously, which
    works for public upstreams and fails with "the upstream wants credentials" for private ones."""
    auth = config.git.auth
    named = [
        ("token_env", auth.token_env),
        ("user_env", auth.user_env),
        ("pass_env", auth.pass_env),
        ("dockerconfigjson_env", auth.dockerconfigjson_env),
    ]
    return [
        f"git.auth.{key}: environment variable {name} is not set or empty; fetching anonymously"
        for key, name in named
        if name and not environ.get(name)
    ]


def perform_sync(
    config: Config,
    request: SyncRequest,
    *,
    allow_runtime_sync: bool,
    redactor: Redactor,
    environ: Mapping[str, str],
    run_git: Callable[[MirrorSyncer, list[RepoTask]], list[RepoResult]] | None = None,
    copy_progress: Progress | None = None,
) -> SyncReport:
    """`cccatalog sync`: refuse what cannot be done before anything is written, then run under the state
    file and the run locks. Usage problems raise UsageError (exit 2) with the disk untouched."""
    from cccatalog.catalog.store import Store

    check_only(config, request.only)
    request = check_air_gap(config, request, allow=allow_runtime_sync)
    if reason := nothing_to_sync(config, request):
        return SyncReport(warnings=[reason])
    git_half = request.git and config.git.enabled and bool(plan_sync(config, only=request.only))
    if git_half:
        require_writable_dir(config.git.data_dir, setting="git.data_dir")
    require_writable_dir(config.state.local_dir, setting=config.state.setting)
    warnings = credential_warnings(config, environ) if git_half else []
    if request.git and not config.git.enabled and any(cc.git_url for cc in config.codecollections):
        warnings.append(f"git mirroring is disabled (git.enabled is false in {config.path})")
    secrets = config.state.secrets(environ)
    redactor.add(*secrets)
    if git_half and config.state.url:
        # the volume id lives in the data directory this run is about to fill anyway
        config.git.data_dir.mkdir(parents=True, exist_ok=True)
    # The state first: a corrupt or newer one is refused before any lock file is made.
    with Store.for_config(config, environ=environ) as store, run_locks(config, request, store) as granted:
        report = run_sync(
            config,
            store,
            granted,
            redactor=redactor,
            environ=environ,
            run_git=run_git,
            copy_progress=copy_progress,
        )
    report.warnings[:0] = warnings
    return report


def check_only(config: Config, only: Sequence[str]) -> None:
    """--only must name configured collections (raises UsageError otherwise)."""
    plan_sync(config, only=only, ignore_enabled=True)


_CHANGED = (Action.CLONED, Action.REBUILT, Action.UPDATED)
_SYNCED = (*_CHANGED, Action.UNCHANGED)


def git_summary(config: Config, report: SyncReport, *, skipped: str | None = None) -> dict[str, object]:
    """The predecessor's sync-git answer: {enabled, runtime_sync, repos_processed, repos_updated, errors}.

    `repos_updated` keeps the predecessor's meaning, repos synced successfully (a no-op fetch counts);
    `repos_changed` counts those whose refs changed (cloned, rebuilt or updated).
    """
    summary: dict[str, object] = {
        "enabled": config.git.enabled,
        "runtime_sync": config.git.runtime_sync,
        "repos_processed": len(report.git),
        "repos_updated": sum(r.action in _SYNCED for r in report.git),
        "repos_changed": sum(r.action in _CHANGED for r in report.git),
        "errors": [{"slug": r.slug, "error": r.error} for r in report.git if r.failed],
        "repos": [r.to_json() for r in report.git],
    }
    if skipped:
        summary["skipped"] = skipped
    return summary


def catalog_summary(report: SyncReport, *, skipped: str | None = None) -> dict[str, object]:
    """The predecessor's sync-catalog answer: collections polled successfully, refs upserted and
    deactivated, and one `{source, slug, error}` per collection that failed."""
    summary: dict[str, object] = {
        "collections_processed": sum(not r.failed for r in report.images),
        "refs_upserted": sum(r.refs for r in report.images),
        "refs_deactivated": sum(r.deactivated for r in report.images),
        "errors": [{"source": r.source, "slug": r.slug, "error": r.error} for r in report.images if r.failed],
    }
    if report.images_held_back and not skipped:
        skipped = (
            f"images.runtime_sync is false: {len(report.images_held_back)} collection(s) on a registry "
            "or another catalog were not polled; pass allow_runtime_sync=true"
        )
    if skipped:
        summary["skipped"] = skipped
    if report.images_held_back:
        summary["held_back"] = list(report.images_held_back)
    return summary
