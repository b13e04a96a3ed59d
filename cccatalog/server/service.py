"""Everything `serve` runs besides the socket: the state, the servable rule, admin jobs, the optional
scheduler, and the start-up backfill of mirrors baked without a state file."""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cccatalog.catalog.store import Store
from cccatalog.config import Config
from cccatalog.errors import CCCatalogError, LockBusy, StateError
from cccatalog.gitmirror.bake import check_manifest
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.mirror import Mirror
from cccatalog.gitmirror.servable import Servability, mirrored_slugs
from cccatalog.jobs import (
    SyncReport,
    SyncRequest,
    catalog_summary,
    git_summary,
    reaches_network,
    run_lock_path,
    run_sync,
)
from cccatalog.redact import Redactor, strip_url_credentials
from cccatalog.server.admin_jobs import JobRunner
from cccatalog.server.api import ApiContext
from cccatalog.server.live_config import LiveConfig

log = logging.getLogger("cccatalog.serve")


@dataclass
class Service:
    api: ApiContext
    scheduler: Scheduler | None = None

    def close(self) -> None:
        if self.scheduler:
            self.scheduler.stop()
        self.api.store.close()


def build_service(
    config: Config, *, environ: Mapping[str, str], redactor: Redactor, readonly: bool = False
) -> Service:
    """Everything a server needs besides its socket. `readonly`: for a one-off reader beside a running
    server (`serve --get`): the state file is only read, and nothing is written anywhere."""
    live = LiveConfig(config, environ=environ)
    try:
        store = Store.open_readonly(config.state.path) if readonly else Store.open(config.state.path)
    except StateError as exc:
        # Git serving does not need the state; refusing to start would take every clone down with it.
        if not readonly:
            log.error(
                "%s; serving with an in-memory state until this is fixed (catalog refs start empty)", exc
            )
        else:
            log.info("%s; answering from an empty in-memory state", exc)
        store = Store.memory()
    servability = Servability(Git(redactor=redactor))

    def sync_git(cfg: Config, allow_runtime_sync: bool) -> dict[str, Any]:
        if not cfg.git.enabled:
            return git_summary(cfg, SyncReport(), skipped="git mirroring is disabled (git.enabled: false)")
        if not cfg.git.runtime_sync and not allow_runtime_sync:
            return git_summary(
                cfg, SyncReport(), skipped="git.runtime_sync is false; pass allow_runtime_sync=true"
            )
        report = run_sync(cfg, store, SyncRequest(git=True, images=False), redactor=redactor, environ=environ)
        return git_summary(cfg, report)

    def sync_catalog(cfg: Config, allow_runtime_sync: bool) -> dict[str, Any]:
        request = SyncRequest(git=False, images=True)
        if not cfg.git.runtime_sync and not allow_runtime_sync and reaches_network(cfg, request):
            return catalog_summary(
                SyncReport(), skipped="git.runtime_sync is false; pass allow_runtime_sync=true"
            )
        return catalog_summary(run_sync(cfg, store, request, redactor=redactor, environ=environ))

    api = ApiContext(
        live, store, servability, JobRunner(), {"git": sync_git, "images": sync_catalog}, environ
    )
    if not readonly or store.path == Path(":memory:"):
        backfill(config, store, servability)
    baked = baked_mismatches(config, store, servability)
    api.ready_checks.append(lambda _config: "; ".join(baked) if baked else None)
    return Service(api)


def run_server(
    config: Config,
    *,
    host: str,
    port: int,
    environ: Mapping[str, str],
    redactor: Redactor,
    git_sync_minutes: int | None = None,
    catalog_poll_minutes: int | None = None,
) -> None:
    """`cccatalog serve`: bind first (a taken port writes nothing), then open the state, start the
    scheduler when asked for, and serve until SIGTERM/SIGINT."""
    from cccatalog.server.app import CatalogServer, serve_forever
    from cccatalog.server.sockets import listen_socket

    sock = listen_socket(host, port)
    try:
        service = build_service(config, environ=environ, redactor=redactor)
    except BaseException:
        sock.close()
        raise
    try:
        server = CatalogServer((host, port), service.api, config.serve, sock=sock)
        service.scheduler = Scheduler(
            service.api,
            git_minutes=git_sync_minutes or config.scheduler.git_sync_minutes,
            catalog_minutes=catalog_poll_minutes or config.scheduler.catalog_poll_minutes,
        )
        log.info("serving %s (git under %s/)", server.url, config.git.mount_path)
        serve_forever(server)
    finally:
        service.close()


def get_once(
    config: Config, target: str, *, environ: Mapping[str, str], redactor: Redactor
) -> tuple[int, object]:
    """Answer one API request in-process (`serve --get`, a container health check) without writing
    anything: the state file is only read, and a missing one answers from an empty state."""
    from urllib.parse import urlsplit

    from cccatalog import envvars
    from cccatalog.server.api import handle

    parts = urlsplit(target if target.startswith("/") else "/" + target)
    token = envvars.first(environ, envvars.ADMIN_TOKEN)
    service = build_service(config, environ=environ, redactor=redactor, readonly=True)
    try:
        answer = handle(service.api, "GET", parts.path, parts.query, f"Bearer {token}" if token else None)
    finally:
        service.close()
    if answer is None:
        return 404, {"detail": "Not Found"}
    return answer.status, answer.body


def baked_mismatches(config: Config, store: Store, servability: Servability) -> list[str]:
    """Repos still as baked (never synced here) that do not match the bake manifest: logged and
    reported by /readyz, never served silently as if they were right."""
    as_baked = [m.slug for m in store.list_mirrors() if m.last_action in (None, "baked")]
    problems = check_manifest(servability.git, config.git.data_dir, as_baked)
    for problem in problems:
        log.error("baked mirror check: %s", problem)
    return problems


def backfill(config: Config, store: Store, servability: Servability) -> int:
    """Mirrors baked into an image arrive without a state file: read their heads from disk, so the
    status API is right before any sync has run. Known mirrors are left alone."""
    known = {m.slug for m in store.list_mirrors()}
    count = 0
    for slug in sorted(mirrored_slugs(config) - known):
        repo = config.git.data_dir / f"{slug}.git"
        if not servability.is_complete(repo):
            continue
        try:
            state = Mirror(servability.git, repo, foreign=True).local_state("branches-and-tags")
        except CCCatalogError as exc:
            log.warning("%s: cannot read the baked mirror: %s", slug, exc)
            continue
        cc = config.collection(slug)
        upstream = strip_url_credentials(cc.git_url) if cc and cc.git_url else ""
        store.backfill_mirror(
            slug,
            upstream_url=upstream,
            head_commit=state.head_commit or "",
            default_branch=(state.head or "").removeprefix("refs/heads/"),
        )
        count += 1
    if count:
        log.info("read %d baked mirrors from %s", count, config.git.data_dir)
    return count


class Scheduler:
    """Runs the git and image syncs every N minutes (jittered ±10 %) when the config asks for it.
    Never overlaps a cron `sync` or an admin job: a run whose lock is taken is skipped."""

    def __init__(self, api: ApiContext, *, git_minutes: int | None, catalog_minutes: int | None) -> None:
        self.api = api
        self._stop = threading.Event()
        for kind, minutes in (("git", git_minutes), ("images", catalog_minutes)):
            if minutes:
                threading.Thread(
                    target=self._loop, args=(kind, minutes), name=f"every-{kind}", daemon=True
                ).start()

    def _loop(self, kind: str, minutes: int) -> None:
        action = "sync-git" if kind == "git" else "sync-catalog"
        while not self._stop.wait(minutes * 60 * random.uniform(0.9, 1.1)):  # noqa: S311 - jitter, not crypto
            config = self.api.config
            work = functools.partial(
                self.api.sync[kind], config, False
            )  # False: never past the air-gap guard
            try:
                job = self.api.jobs.start(action, run_lock_path(config, kind), work)
            except LockBusy as exc:
                log.info("scheduled %s skipped: %s", action, exc)
                continue
            log.info("scheduled %s started (job %s)", action, job.id)

    def stop(self) -> None:
        self._stop.set()
