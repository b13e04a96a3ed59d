"""The JSON API as a pure routing function over an `ApiContext`: callable without a socket
(`serve --get`), used by the HTTP adapter for every `/api/...`, `/healthz` and `/readyz` request.

The predecessor's contract: catalog, git status and admin endpoints with the same paths, fields,
status codes and `{"detail": ...}` errors. Wrong admin tokens are rate-limited per client
and over all clients (`auth_limit`): past a limit, 429 + Retry-After before any token is compared.

The catalog list reads one row per collection (latest and stable are kept with the rows when they are
written). While a PostgreSQL state cannot be reached, catalog answers come from the store's last good
read, /readyz says "degraded" and why, and a question never answered before gets 503 + Retry-After.
Git status answers name the replica that answered: mirrors live on each replica's own disk.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from cccatalog import envvars
from cccatalog.catalog import views
from cccatalog.catalog.models import CatalogPointers
from cccatalog.catalog.pointers import pointers
from cccatalog.catalog.store import Store
from cccatalog.config import CodeCollection, Config
from cccatalog.errors import CCCatalogError, LockBusy, StateError, StateUnavailable
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.servable import Servability, mirrored_slugs
from cccatalog.runlocks import Locks
from cccatalog.server.admin_jobs import Job, JobRunner
from cccatalog.server.auth_limit import FailureLimiter
from cccatalog.server.live_config import LiveConfig
from cccatalog.timestamps import rfc3339

CATALOG = "/api/v1/catalog/codecollections"
GIT_REPOS = "/api/v1/git/repos"
ADMIN = "/api/v1/admin/"
MANIFEST = "/api/v1/manifest"
MIRROR = "/api/v1/mirror/"
# How long a client should wait before asking again while the state database cannot be reached.
STATE_RETRY_SECONDS = 5

log = logging.getLogger("cccatalog.serve")


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


class HttpError(Exception):
    def __init__(self, status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


@dataclass
class ApiContext:
    live: LiveConfig
    store: Store
    servability: Servability
    jobs: JobRunner
    # kind -> a function that runs that sync now and returns the predecessor-shaped summary
    sync: Mapping[str, Callable[[Config, bool], dict[str, Any]]]
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    ready_checks: list[Callable[[Config], str | None]] = field(default_factory=list)
    # what is wrong with one repo, not the replica: /readyz stays 200 and says "degraded"
    ready_warnings: list[Callable[[Config], str | None]] = field(default_factory=list)
    admin_failures: FailureLimiter = field(default_factory=FailureLimiter)
    locks: Locks | None = None
    # how this replica names itself in answers about its own disk
    replica: str = ""

    def __post_init__(self) -> None:
        if self.locks is None:
            self.locks = Locks.for_state(self.live.current, self.store)

    @property
    def config(self) -> Config:
        return self.live.current

    @property
    def run_locks(self) -> Locks:
        assert self.locks is not None
        return self.locks

    def servable(self, config: Config) -> Callable[[str], bool]:
        return lambda slug: self.servability.is_servable(config, slug)


def handle(
    ctx: ApiContext, method: str, path: str, query: str, authorization: str | None, *, client: str = ""
) -> ApiResponse | None:
    """Answer an API request, or None when `path` is not an API path. `client`: the peer's address."""
    try:
        if path in ("/healthz", "/readyz"):
            return _health(ctx, path) if method in ("GET", "HEAD") else _method_not_allowed()
        if path == MANIFEST:
            return _manifest(ctx) if method in ("GET", "HEAD") else _method_not_allowed()
        if path.startswith(ADMIN):
            return _admin(ctx, method, path[len(ADMIN) :], _params(query), authorization, client=client)
        if path.startswith(MIRROR):
            return _mirror(ctx, method, path[len(MIRROR) :], _params(query), authorization, client=client)
        if not path.startswith(("/api/v1/catalog/", "/api/v1/git/", "/api/openapi.json")) and path not in (
            CATALOG,
            GIT_REPOS,
        ):
            return None
        if method not in ("GET", "HEAD"):
            return _method_not_allowed()
        if path == "/api/openapi.json":
            from cccatalog.server.openapi import document

            return ApiResponse(200, document())
        if path.startswith(GIT_REPOS):
            return _git_repos(ctx, path[len(GIT_REPOS) :])
        if path == CATALOG or path.startswith(CATALOG + "/"):
            return _catalog(ctx, path[len(CATALOG) :], _params(query))
        raise HttpError(404, "Not Found")
    except HttpError as exc:
        return ApiResponse(exc.status, {"detail": exc.detail}, exc.headers)
    except StateError as exc:
        # the details (which database, why) go to the log, not to an unauthenticated client
        log.warning("answering %s %s without the state: %s", method, path, exc)
        what = "cannot be reached" if isinstance(exc, StateUnavailable) else "cannot be read"
        return ApiResponse(
            503,
            {"detail": f"the state database {what} right now; retry later (git is served as usual)"},
            (("Retry-After", str(STATE_RETRY_SECONDS)),),
        )


def _method_not_allowed() -> ApiResponse:
    return ApiResponse(405, {"detail": "Method Not Allowed"})


def _params(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def _bool(params: Mapping[str, str], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise HttpError(422, f"query parameter {name}: expected true or false, got {value!r}")


def _health(ctx: ApiContext, path: str) -> ApiResponse:
    if path == "/healthz":
        return ApiResponse(200, {"status": "ok"})
    config = ctx.config
    problems = [p for check in ctx.ready_checks if (p := check(config))]
    warnings = [w for check in ctx.ready_warnings if (w := check(config))]
    try:
        ctx.store.ping()
    except StateUnavailable:
        # still ready: git serving works, and taking the pod out of service would stop every clone
        warnings.append(
            f"state database {ctx.store.location} {ctx.store.unreachable() or 'unreachable'}; "
            "catalog answers come from the last good read"
        )
    except CCCatalogError as exc:
        problems.append(f"state unreachable: {exc}")
    if config.git.enabled and not config.git.data_dir.is_dir():
        problems.append(f"data_dir {config.git.data_dir} is missing")
    slugs = sorted(mirrored_slugs(config))
    served = [s for s in slugs if ctx.servability.is_servable(config, s)]
    body: dict[str, Any] = {"status": "ok", "repos_configured": len(slugs), "repos_servable": len(served)}
    if ctx.store.in_memory:
        warnings.append(f"state {config.state.display} is unusable; state is in memory")
    if warnings:
        body.update(status="degraded", warnings=warnings)
    if problems:
        body.update(status="unavailable", problems=problems)
        return ApiResponse(503, body)
    return ApiResponse(200, body)


def _manifest(ctx: ApiContext) -> ApiResponse:
    """What this site has, in the manifest format `cccatalog export --since` reads."""
    from cccatalog.manifest import site_manifest

    return ApiResponse(200, site_manifest(ctx.config, ctx.servability.git, ctx.store))


def _collection(config: Config, slug: str) -> CodeCollection:
    cc = config.collection(slug)
    if cc is None:
        raise HttpError(404, f"unknown codecollection: {slug}")
    return cc


def _last_synced(ctx: ApiContext, slug: str) -> Any:
    status = ctx.store.get_image_sync(slug)
    return status.succeeded_at if status else None


def _catalog(ctx: ApiContext, rest: str, params: Mapping[str, str]) -> ApiResponse:
    config = ctx.config
    servable = ctx.servable(config)
    if rest in ("", "/"):
        visibility = params.get("visibility") or None
        if visibility not in (None, "public", "hidden"):
            raise HttpError(422, f"query parameter visibility: expected public or hidden, got {visibility!r}")
        only_with_image = _bool(params, "only_with_image", True)
        found = ctx.store.catalog_pointers()
        # one membership test per row instead of re-reading the config for each (the list is long)
        mirrored = mirrored_slugs(config)
        layout = Layout(config.git.data_dir)

        def listed_servable(slug: str) -> bool:
            return slug in mirrored and ctx.servability.is_complete(layout.repo(slug))

        entries = []
        for cc in sorted(config.codecollections, key=lambda c: c.slug):
            if visibility and cc.visibility != visibility:
                continue
            kept = found.get(cc.slug) or CatalogPointers(cc.slug)
            if only_with_image and not kept.has_image:
                continue
            entries.append(views.pointers_entry(config, cc, kept, listed_servable))
        return ApiResponse(200, entries)
    slug, _, sub = rest.lstrip("/").partition("/")
    cc = _collection(config, unquote(slug))
    if sub == "":
        refs = [r for r in ctx.store.list_image_refs(cc.slug) if r.image_tag]
        entry = views.catalog_entry(config, cc, refs, _last_synced(ctx, cc.slug), servable)
        return ApiResponse(200, {**entry, "refs": [views.image_ref(r) for r in refs]})
    if sub == "refs":
        refs = ctx.store.list_image_refs(cc.slug, include_inactive=_bool(params, "include_inactive", False))
        return ApiResponse(200, [views.image_ref(r) for r in refs if r.image_tag])
    if sub.startswith("refs/"):
        ref = unquote(sub[len("refs/") :])  # refs may contain '/', raw or percent-encoded
        # an inactive ref (its build is gone from the registry) is still answered, is_active false
        refs = ctx.store.list_image_refs(cc.slug, include_inactive=True)
        row = next((r for r in refs if r.ref == ref and r.image_tag), None)
        if row is None:
            raise HttpError(404, f"no image for {cc.slug}@{ref}")
        return ApiResponse(200, views.image_ref(row))
    if sub == "resolve":
        return _resolve(ctx, cc, params)
    raise HttpError(404, "Not Found")


def _resolve(ctx: ApiContext, cc: CodeCollection, params: Mapping[str, str]) -> ApiResponse:
    pointer, ref = params.get("pointer") or None, params.get("ref") or None
    if bool(pointer) == bool(ref):
        raise HttpError(400, "exactly one of 'pointer' or 'ref' must be provided")
    if pointer not in (None, "latest", "stable"):
        raise HttpError(422, f"query parameter pointer: expected latest or stable, got {pointer!r}")
    refs = [r for r in ctx.store.list_image_refs(cc.slug) if r.image_tag]
    if not refs:
        raise HttpError(404, f"no images tracked for {cc.slug}")
    latest, stable = pointers(refs)
    selected = {"latest": latest, "stable": stable}.get(pointer or "") if pointer else None
    if ref:
        selected = next((r for r in refs if r.ref == ref), None)
    requested = pointer or ref or ""
    if selected is None:
        raise HttpError(404, f"could not resolve {requested!r} for {cc.slug}")
    payload = views.resolve_payload(cc, requested, selected)
    if destination := params.get("destination") or None:
        # The predecessor's: a destination not configured is a 404; one that does not hold the build
        # (yet) answers nulls, and clients use the source image.
        if ctx.config.destination(destination) is None:
            raise HttpError(404, f"unknown destination: {destination}")
        payload["destination"] = destination
        held = next(
            (
                t
                for t in ctx.store.mirror_targets(slug=cc.slug)
                if t.destination == destination and t.source_image_tag == selected.image_tag
            ),
            None,
        )
        if held is not None:
            payload["target_image_ref"], payload["target_digest"] = held.target_image_ref, held.target_digest
    return ApiResponse(200, payload)


def _mirror(
    ctx: ApiContext,
    method: str,
    rest: str,
    params: Mapping[str, str],
    authorization: str | None,
    *,
    client: str,
) -> ApiResponse:
    from cccatalog.server import mirror_api

    try:
        status, body = mirror_api.handle(
            ctx, method, rest, params, authorize=lambda: _authorize(ctx, authorization, client)
        )
    except mirror_api.MirrorApiError as exc:
        raise HttpError(exc.status, exc.detail) from None
    return ApiResponse(status, body)


def _git_repos(ctx: ApiContext, rest: str) -> ApiResponse:
    config = ctx.config
    if not config.git.enabled:
        raise HttpError(404, "git mirroring is disabled")
    servable = ctx.servable(config)
    mirrored = mirrored_slugs(config)
    statuses = {m.slug: m for m in ctx.store.list_mirrors()}
    if rest in ("", "/"):
        ccs = sorted((cc for cc in config.codecollections if cc.slug in mirrored), key=lambda c: c.slug)
        return ApiResponse(
            200,
            [
                views.repo_status(config, cc, statuses.get(cc.slug), servable, replica=ctx.replica)
                for cc in ccs
            ],
        )
    slug = unquote(rest.lstrip("/"))
    cc = config.collection(slug)
    if cc is None or slug not in mirrored:
        raise HttpError(404, f"unknown git repo: {slug}")
    status = statuses.get(slug)
    local_path = Layout(config.git.data_dir).repo(slug)
    return ApiResponse(
        200, views.repo_status(config, cc, status, servable, local_path=local_path, replica=ctx.replica)
    )


def admin_token(environ: Mapping[str, str]) -> str | None:
    return envvars.first(environ, envvars.ADMIN_TOKEN)


def _authorize(ctx: ApiContext, authorization: str | None, client: str) -> None:
    token = admin_token(ctx.environ)
    if token is None:
        raise HttpError(503, f"admin endpoints are disabled: set {envvars.ADMIN_TOKEN[0]} to enable them")
    if (wait := ctx.admin_failures.retry_after(client)) is not None:
        raise HttpError(
            429, "too many wrong admin tokens from this address; retry later", (("Retry-After", str(wait)),)
        )
    if (wait := ctx.admin_failures.retry_after_all()) is not None:
        raise HttpError(
            429, "too many wrong admin tokens from all clients; retry later", (("Retry-After", str(wait)),)
        )
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HttpError(
            401, "missing bearer token", (("WWW-Authenticate", 'Bearer realm="cccatalog-admin"'),)
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        ctx.admin_failures.failed(client)
        raise HttpError(403, "invalid admin token")


def _job_body(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "kind": job.kind,
        "state": job.state,
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
        "result": job.result,
        "error": job.error,
        "replica": job.replica,
        "url": f"{ADMIN}jobs/{job.id}",
    }


def _admin(
    ctx: ApiContext,
    method: str,
    action: str,
    params: Mapping[str, str],
    authorization: str | None,
    *,
    client: str,
) -> ApiResponse:
    if action.startswith("jobs/"):
        if method not in ("GET", "HEAD"):
            return _method_not_allowed()
        _authorize(ctx, authorization, client)
        job = ctx.jobs.get(action[len("jobs/") :])
        if job is None:
            raise HttpError(404, "unknown job")
        return ApiResponse(200, _job_body(job))
    if action not in ("sync-git", "sync-catalog", "reload-config"):
        raise HttpError(404, "Not Found")
    if method != "POST":
        return _method_not_allowed()
    _authorize(ctx, authorization, client)
    if action == "reload-config":
        if not ctx.live.reload():
            raise HttpError(
                422, "the config file is invalid; the previous config stays in effect (see the log)"
            )
        config = ctx.config
        return ApiResponse(
            200,
            {
                "status": "ok",
                "sources": len(config.sources),
                # counts, as the predecessor's
                "destinations": len(config.destinations),
                "codecollections": len(config.codecollections),
            },
        )
    allow = _bool(params, "allow_runtime_sync", False)
    kind = "git" if action == "sync-git" else "images"
    config = ctx.config
    work = ctx.sync[kind]
    try:
        job = ctx.jobs.start(action, ctx.run_locks.run(kind), lambda: work(config, allow))
    except LockBusy as exc:
        raise HttpError(409, str(exc)) from None
    if _bool(params, "wait", False):
        job.done.wait()
        if job.state == "failed":
            raise HttpError(500, job.error or "the sync failed")
        return ApiResponse(200, job.result)
    return ApiResponse(202, _job_body(job), (("Location", f"{ADMIN}jobs/{job.id}"),))
