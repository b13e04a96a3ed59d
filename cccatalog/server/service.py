"""Everything `serve` runs besides the socket: the state, the servable rule, admin jobs, the scheduler,
and the backfill of mirrors found on disk without a state row (baked ones, at start-up and after
each config reload).

The scheduler is on by default, as in the predecessor: an image poll every 5 minutes and a git sync
every 60, each first run at start-up, and with `destinations` configured, a mirror run (copies of the
newest builds to them) every `scheduler.mirror_poll_minutes`. `scheduler.*: 0` turns one off,
`CC_CATALOG_DISABLE_SCHEDULER` (or `CCCATALOG_DISABLE_SCHEDULER`) set to 1/true/yes/on turns all off,
`serve --git-sync-minutes` and `--catalog-poll-minutes` override either. The air-gap guards hold:
with `git.runtime_sync: false` the git runs are skipped (no git egress ever), with
`images.runtime_sync: false` the image runs read only `static` sources and copy nothing.

Several `serve` processes on one state (replicas on one PostgreSQL database, or processes sharing one
SQLite file) elect a leader per kind of run: whoever holds the kind's leader lock runs its schedule,
the others try to take the lock at each of their own ticks, so when the leader dies another replica
runs the next scheduled sync (`cccatalog.runlocks`). Git leadership is per mirror volume.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cccatalog import envvars
from cccatalog.baked import Findings
from cccatalog.catalog.sqlite_engine import MEMORY
from cccatalog.catalog.store import Store
from cccatalog.config import Config
from cccatalog.errors import CCCatalogError, LockBusy, StateError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import Mirror
from cccatalog.gitmirror.refstate import RACY_SECONDS
from cccatalog.gitmirror.servable import Servability, mirrored_slugs
from cccatalog.jobs import (
    SyncReport,
    SyncRequest,
    catalog_summary,
    git_summary,
    held_git,
    run_sync,
)
from cccatalog.redact import Redactor, strip_url_credentials
from cccatalog.replica import replica_id
from cccatalog.runlocks import Held, Locks
from cccatalog.server.admin_jobs import JobRunner
from cccatalog.server.api import ApiContext, admin_token
from cccatalog.server.live_config import LiveConfig
from cccatalog.server.pack_cache import PackCache

if TYPE_CHECKING:
    import socket

    from cccatalog.config import ServeConfig
    from cccatalog.server.app import CatalogServer
    from cccatalog.server.cgi import HttpBackend

log = logging.getLogger("cccatalog.serve")


GIT_GUARD = "git.runtime_sync is false (the air-gap guard)"
# what each kind of scheduled run is called in jobs and logs
_ACTIONS = {"git": "sync-git", "images": "sync-catalog", "mirror": "sync-mirror"}


@dataclass
class Service:
    api: ApiContext
    scheduler: Scheduler | None = None
    environ: Mapping[str, str] = field(default_factory=dict)

    def start_scheduler(
        self, *, git_minutes: int | None = None, catalog_minutes: int | None = None, unit: float = 60.0
    ) -> Scheduler | None:
        """Start the scheduler `serve` runs (None when it is off); the arguments are the command
        line's overrides. `unit` is the length of a minute in seconds."""
        git, catalog, why_off = scheduler_intervals(
            self.api.config, self.environ, git_minutes=git_minutes, catalog_minutes=catalog_minutes
        )
        # image mirroring runs only when destinations are configured; the environment turns it off too
        config = self.api.config
        mirror = config.scheduler.mirror_poll_minutes if config.destinations and _enabled(self.environ) else 0
        if why_off and not mirror:
            log.info("scheduler off: %s", why_off)
            return None
        self.scheduler = Scheduler(
            self.api, git_minutes=git, catalog_minutes=catalog, mirror_minutes=mirror, unit=unit
        )
        return self.scheduler

    def serve_on(
        self,
        address: tuple[str, int],
        *,
        sock: socket.socket | None = None,
        settings: ServeConfig | None = None,
        backend: HttpBackend | None = None,
        racy_seconds: float = RACY_SECONDS,
    ) -> CatalogServer:
        """The HTTP server of this service, its parts wired here: the one place a server is put
        together (`settings` default to the config's serve block; tests pass their own)."""
        from cccatalog.server.admission import Admission
        from cccatalog.server.advert_cache import AdvertCache
        from cccatalog.server.app import CatalogServer, ServingParts
        from cccatalog.server.cgi import HttpBackend
        from cccatalog.server.metrics import ServerMetrics
        from cccatalog.server.reaper import Reaper

        settings = settings or self.api.config.serve
        backend = backend or HttpBackend()
        adverts = AdvertCache(settings.advertisement_cache_mb * 1024 * 1024)
        admission = Admission(
            settings.max_concurrent_upload_packs,
            max_queued=settings.max_queued_upload_packs,
            max_wait=settings.max_queue_wait_seconds,
        )
        packs = open_pack_cache(settings, self.api.config.state.path)
        metrics = ServerMetrics(
            self.api, settings, adverts=adverts, backend=backend, admission=admission, packs=packs
        )
        token = admin_token(self.api.environ)
        parts = ServingParts(
            backend, adverts, admission, packs, Reaper(), metrics, Redactor([token] if token else [])
        )
        return CatalogServer(address, self.api, settings, parts, sock=sock, racy_seconds=racy_seconds)

    def close(self) -> None:
        if self.scheduler:
            self.scheduler.stop()
        self.api.store.close()


def open_pack_cache(settings: ServeConfig, state_path: Path) -> PackCache | None:
    """The pack cache `settings` ask for, or None: off, or its directory cannot be written (logged)."""
    if not settings.pack_cache_mb:
        return None
    directory = settings.pack_cache_dir or state_path.parent / "pack-cache"
    try:
        return PackCache(
            directory, settings.pack_cache_mb * 1024 * 1024, second_sight=settings.pack_cache_second_sight
        )
    except OSError as exc:
        log.warning(
            "pack cache off: cannot use %s (%s); set serve.pack_cache_dir to a writable path", directory, exc
        )
        return None


def _enabled(environ: Mapping[str, str]) -> bool:
    """False when the environment turns the scheduler off."""
    return envvars.flag(environ, envvars.DISABLE_SCHEDULER) is None


def scheduler_intervals(
    config: Config,
    environ: Mapping[str, str],
    *,
    git_minutes: int | None = None,
    catalog_minutes: int | None = None,
) -> tuple[int, int, str | None]:
    """(git minutes, image minutes, why the scheduler is off or None); 0 is off. The command line
    wins over the environment, which wins over the config file and its defaults."""
    disabled = envvars.flag(environ, envvars.DISABLE_SCHEDULER)
    git = config.scheduler.git_sync_minutes if git_minutes is None else git_minutes
    catalog = config.scheduler.catalog_poll_minutes if catalog_minutes is None else catalog_minutes
    if disabled:
        git = 0 if git_minutes is None else git
        catalog = 0 if catalog_minutes is None else catalog
    if git or catalog:
        return git, catalog, None
    why = f"{disabled} is set" if disabled else "scheduler.git_sync_minutes and catalog_poll_minutes are 0"
    return 0, 0, why


def build_service(
    config: Config, *, environ: Mapping[str, str], redactor: Redactor, create_state: bool = True
) -> Service:
    """Everything a server needs besides its socket. `create_state=False` is for a one-off reader
    (`serve --get`, a container health check): a missing state file is not created, and the answers
    come from an empty in-memory state instead; an existing one is used as `serve` uses it."""
    live = LiveConfig(config, environ=environ)
    if token := envvars.first(environ, envvars.ADMIN_TOKEN):
        redactor.add(token)  # pasted into a URL path or a header, it is masked in every log line
    replica = replica_id(config)
    store = open_state(config, environ=environ, redactor=redactor, replica=replica, create=create_state)
    servability = Servability(Git(redactor=redactor))

    def sync_git(cfg: Config, allow_runtime_sync: bool) -> dict[str, Any]:
        if not cfg.git.enabled:
            return git_summary(cfg, SyncReport(), skipped="git mirroring is disabled (git.enabled: false)")
        request = SyncRequest(git=True, images=False, allow_runtime_sync=allow_runtime_sync)
        if held_git(cfg, request):
            return git_summary(cfg, SyncReport(), skipped=f"{GIT_GUARD}; pass allow_runtime_sync=true")
        return git_summary(cfg, run_sync(cfg, store, request, redactor=redactor, environ=environ))

    def sync_catalog(cfg: Config, allow_runtime_sync: bool) -> dict[str, Any]:
        # images.runtime_sync holds back registries and other catalogs; static sources always run.
        # Copies to destinations are the mirror runs' (scheduler.mirror_poll_minutes, the mirror API).
        request = SyncRequest(git=False, images=True, mirror=False, allow_runtime_sync=allow_runtime_sync)
        return catalog_summary(run_sync(cfg, store, request, redactor=redactor, environ=environ))

    def sync_mirror(cfg: Config, allow_runtime_sync: bool) -> dict[str, Any]:
        # the job holds the mirror run lock; images.runtime_sync holds copies back as it holds polls
        if not (cfg.images.runtime_sync or allow_runtime_sync):
            return {"destinations": [], "skipped": "images.runtime_sync is false: nothing is copied"}
        from cccatalog.destinations.sync import run_mirrors

        return {"destinations": run_mirrors(cfg, store, environ=environ, redactor=redactor).to_json()}

    locks = Locks.for_state(config, store)
    jobs = JobRunner(store, replica=replica, lock_held=locks.held, lock_owner=locks.owner)
    syncs = {"git": sync_git, "images": sync_catalog, "mirror": sync_mirror}
    api = ApiContext(live, store, servability, jobs, syncs, environ, locks=locks, replica=replica)
    try:
        backfill(config, store, servability)
    except StateError as exc:
        # git is served from disk all the same; the status API fills in once the state is back
        log.warning("cannot record the mirrors found on disk: %s", exc)
    # a collection a reload adds may have its mirror on disk already: its status must say so
    live.listeners.append(functools.partial(_backfill_after_reload, store=store, servability=servability))
    manifest_check = ManifestCheck(config, store, servability, environ)
    api.ready_checks.append(manifest_check)
    api.ready_warnings.append(manifest_check.repo_warnings)
    return Service(api, environ=environ)


def open_state(
    config: Config, *, environ: Mapping[str, str], redactor: Redactor, replica: str, create: bool = True
) -> Store:
    """The state serve answers from. Git serving does not need it, so an unusable state never stops
    `serve`: a PostgreSQL database that cannot be reached yet is connected to when it can be (the
    catalog answers 503 until then); an unusable state file, or a database that refuses cccatalog
    (a newer schema, another program's tables), leaves an in-memory state (the catalog starts empty).
    `create=False` is for a one-off reader: a missing state file is not created, and the answers come
    from an empty in-memory state instead."""
    state = config.state
    secrets = state.secrets(environ)
    redactor.add(*secrets)
    if state.url is None and not create and not state.path.exists():
        log.info("no state file at %s yet; answering from an empty state", state.path)
        return Store.open(MEMORY)
    try:
        return Store.for_config(config, environ=environ, connect_later=create)
    except StateError as exc:
        log.error("%s; serving with an in-memory state until this is fixed (catalog starts empty)", exc)
        return Store.open(MEMORY)


def _backfill_after_reload(config: Config, *, store: Store, servability: Servability) -> None:
    try:
        backfill(config, store, servability)
    except StateError as exc:
        log.warning("cannot record the mirrors found on disk: %s", exc)


def run_server(
    config: Config,
    *,
    host: str,
    port: int,
    environ: Mapping[str, str],
    redactor: Redactor,
    git_sync_minutes: int | None = None,
    catalog_poll_minutes: int | None = None,
    minute_seconds: float = 60.0,
) -> None:
    """`cccatalog serve`: bind first (a taken port writes nothing), then open the state, start the
    scheduler when asked for, and serve until SIGTERM/SIGINT. `minute_seconds`: the scheduler's minute."""
    from cccatalog.server.app import serve_forever
    from cccatalog.server.sockets import listen_socket

    sock = listen_socket(host, port)
    try:
        service = build_service(config, environ=environ, redactor=redactor)
    except BaseException:
        sock.close()
        raise
    _sweep_staging(config)
    try:
        server = service.serve_on((host, port), sock=sock)
        service.start_scheduler(
            git_minutes=git_sync_minutes, catalog_minutes=catalog_poll_minutes, unit=minute_seconds
        )
        log.info("serving %s (git under %s/)", server.url, config.git.mount_path)
        serve_forever(server)
    finally:
        service.close()


def _sweep_staging(config: Config) -> None:
    """What imports killed midway left unpacked: removed at start, as the next import would."""
    from cccatalog.transfer.staging import sweep

    try:
        removed = sweep(config.git.data_dir)
    except OSError as exc:  # a serving uid that does not own data_dir: the next import sweeps
        log.warning("cannot remove what killed imports left in %s: %s", config.git.data_dir, exc)
        return
    if removed:
        log.info(
            "removed %d staging directories killed imports left in %s", len(removed), config.git.data_dir
        )


def get_once(
    config: Config, target: str, *, environ: Mapping[str, str], redactor: Redactor
) -> tuple[int, object]:
    """Answer one API request in-process (`serve --get`, a container health check). A missing state
    file is not created: the answer then comes from an empty state."""
    from urllib.parse import urlsplit

    from cccatalog.server.api import handle

    parts = urlsplit(target if target.startswith("/") else "/" + target)
    token = envvars.first(environ, envvars.ADMIN_TOKEN)
    service = build_service(config, environ=environ, redactor=redactor, create_state=False)
    try:
        answer = handle(service.api, "GET", parts.path, parts.query, f"Bearer {token}" if token else None)
    finally:
        service.close()
    if answer is None:
        return 404, {"detail": "Not Found"}
    return answer.status, answer.body


# Actions after which a mirror is as the manifest in data_dir says: baked (or found on disk), imported.
_AS_LISTED = (None, "baked", "imported")


def baked_mismatches(
    config: Config, store: Store, servability: Servability, environ: Mapping[str, str]
) -> Findings:
    """Mirrors that should be as the manifest in data_dir lists them (baked or imported, not changed
    by a sync here since) and are not: missing, half-made, or at other refs (a repo an import killed
    midway moved to the update's refs is as it should be). Logged, and reported by /readyz; never
    served silently as if they were right."""
    from cccatalog.baked import check_mirrors
    from cccatalog.transfer.order import applying

    changed_here = {
        m.slug
        for m in store.list_mirrors()
        if m.last_action not in _AS_LISTED and not (m.last_action == "failed" and m.last_success_at is None)
    }
    slugs = mirrored_slugs(config) - changed_here
    found = check_mirrors(
        servability.git,
        config.git.data_dir,
        slugs,
        transfer=config.transfer,
        environ=environ,
        also=applying(config.git.data_dir),
    )
    for problem in [*found.manifest, *found.repos]:
        log.error("manifest check: %s", problem)
    return found


class ManifestCheck:
    """The readiness check of the manifest in data_dir: run at start-up, and again when an import
    replaces the manifest or starts applying another update (either file changes), not on every
    /readyz. Called, it answers the replica's problem (the manifest itself: 503); `repo_warnings`
    answers what is wrong with single repos, which leaves the replica ready ("degraded")."""

    def __init__(
        self, config: Config, store: Store, servability: Servability, environ: Mapping[str, str]
    ) -> None:
        self._store, self._servability, self._environ = store, servability, environ
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._found = Findings()
        self(config)

    def __call__(self, config: Config) -> str | None:
        found = self._refresh(config)
        return "; ".join(found.manifest) if found.manifest else None

    def repo_warnings(self, config: Config) -> str | None:
        found = self._refresh(config)
        return "; ".join(found.repos) if found.repos else None

    def _refresh(self, config: Config) -> Findings:
        from cccatalog.transfer.order import applying_path

        data_dir = config.git.data_dir
        key = tuple(_stamp(p) for p in (data_dir / "manifest.json", applying_path(data_dir)))
        with self._lock:
            if key != self._key:
                try:
                    self._found = baked_mismatches(config, self._store, self._servability, self._environ)
                except StateError as exc:
                    # which mirrors a sync here changed is in the state: checked again once it is back
                    log.warning("manifest check postponed: %s", exc)
                    return Findings()
                self._key = key
            return self._found


def _stamp(path: Path) -> tuple[object, ...]:
    try:
        st = path.stat()
    except OSError:
        return (path, None)
    return (path, st.st_ino, st.st_mtime_ns, st.st_size)


def backfill(config: Config, store: Store, servability: Servability) -> int:
    """Mirrors baked into an image arrive without a state file, and a reload may add a collection
    whose mirror is already on disk: read their heads from disk, so the status API is right before any
    sync has run. A head the state knows that is not the one on disk (a sync or import killed after it
    moved the refs, before it wrote the state) is corrected: the head is what the refs say."""
    known = {m.slug: m.head_commit for m in store.list_mirrors() if m.head_commit}
    count = corrected = 0
    for slug in sorted(mirrored_slugs(config)):
        repo = Layout(config.git.data_dir).repo(slug)
        if not servability.is_complete(repo):
            continue
        try:
            state = Mirror(servability.git, repo, foreign=True).local_state("branches-and-tags")
        except CCCatalogError as exc:
            log.warning("%s: cannot read the baked mirror: %s", slug, exc)
            continue
        branch = (state.head or "").removeprefix("refs/heads/")
        if slug in known:
            if state.head_commit and known[slug] != state.head_commit:
                corrected += store.correct_mirror_head(
                    slug, head_commit=state.head_commit, default_branch=branch
                )
                log.warning(
                    "%s: the state said head %s, the mirror is at %s", slug, known[slug], state.head_commit
                )
            continue
        cc = config.collection(slug)
        upstream = strip_url_credentials(cc.git_url) if cc and cc.git_url else ""
        count += store.backfill_mirror(
            slug,
            upstream_url=upstream,
            head_commit=state.head_commit or "",
            default_branch=branch,
        )
    if count:
        log.info("read %d baked mirrors from %s", count, config.git.data_dir)
    return count + corrected


class Scheduler:
    """Runs the git and image syncs every N minutes (jittered ±10 %), each first at start-up.

    Never overlaps a cron `sync`, an admin job or another replica: a run whose lock is taken is
    skipped. Among processes sharing the state, only the leader of a kind runs its schedule (see the
    module's docstring). Never passes the air-gap guards. `unit` is the length of a minute in seconds.
    """

    def __init__(
        self,
        api: ApiContext,
        *,
        git_minutes: int,
        catalog_minutes: int,
        mirror_minutes: int = 0,
        unit: float = 60.0,
    ) -> None:
        self.api = api
        self._stop = threading.Event()
        self._leading: dict[str, Held] = {}
        self.threads: list[threading.Thread] = []
        for kind, minutes in (("git", git_minutes), ("images", catalog_minutes), ("mirror", mirror_minutes)):
            if minutes > 0:
                thread = threading.Thread(
                    target=self._loop, args=(kind, minutes * unit), name=f"every-{kind}", daemon=True
                )
                thread.start()
                self.threads.append(thread)
        log.info(
            "scheduler on: git sync every %s min, image poll every %s min, image mirroring every %s min",
            git_minutes,
            catalog_minutes,
            mirror_minutes,
        )

    def _loop(self, kind: str, seconds: float) -> None:
        delay = 0.0  # the first run at start-up, as the predecessor did
        try:
            while not self._stop.wait(delay):
                self.run_once(kind)
                delay = seconds * random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not crypto
        finally:
            if (held := self._leading.pop(kind, None)) is not None:
                held.release()

    def lead(self, kind: str) -> bool:
        """Whether this process leads the scheduled runs of `kind`, taking the lead when it is free."""
        action = _ACTIONS[kind]
        held = self._leading.get(kind)
        if held is not None:
            if held.alive():
                return True
            del self._leading[kind]
            log.warning("lost the lead of the scheduled %s runs (the state database went away)", action)
        lock = self.api.run_locks.leader(kind)
        try:
            held = lock.try_acquire()
        except (StateError, OSError) as exc:  # the database is away; a lock directory is read-only
            log.warning("scheduled %s skipped: cannot take the lead: %s", action, exc)
            return False
        if held is None:
            log.info("scheduled %s skipped: another replica leads the scheduled runs", action)
            return False
        self._leading[kind] = held
        log.info("this replica (%s) now leads the scheduled %s runs", self.api.replica, action)
        return True

    def run_once(self, kind: str) -> None:
        """Start one scheduled run of `kind` (git, images) unless something holds it back (a guard,
        another replica's lead, a run in progress)."""
        action = _ACTIONS[kind]
        config = self.api.config
        if kind == "git":
            if not config.git.enabled:
                return
            if held_git(config, SyncRequest(git=True, images=False)):
                log.info("scheduled %s skipped: %s", action, GIT_GUARD)
                return
        if not self.lead(kind):
            return
        # False: a scheduled run never passes the air-gap guards
        work = functools.partial(self.api.sync[kind], config, False)
        try:
            job = self.api.jobs.start(action, self.api.run_locks.run(kind), work)
        except (LockBusy, StateError) as exc:
            log.info("scheduled %s skipped: %s", action, exc)
            return
        log.info("scheduled %s started (job %s)", action, job.id)

    def stop(self) -> None:
        """Stop scheduling; each loop lets go of the lead it holds as it ends (at once: it waits on
        the stop event)."""
        self._stop.set()
