"""The predecessor's mirror API (`/api/v1/mirror/...`): destinations and mirror jobs to read, and the
admin triggers that enqueue jobs or drain them. Its paths, fields, status codes and `{"detail": ...}`
errors; called by `api.handle`, which authorizes the admin routes.

    GET  /api/v1/mirror/destinations
    GET  /api/v1/mirror/jobs?status=&destination=&cc_slug=&limit=100&offset=0
    GET  /api/v1/mirror/jobs/{id}
    POST /api/v1/mirror/destinations/{name}/sync                         (admin, 202)
    POST /api/v1/mirror/destinations/{name}/codecollections/{slug}/sync  (admin, 202)
    POST /api/v1/mirror/drain?workers=1..32                              (admin, 200)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from cccatalog.catalog.models import MirrorJobRecord
from cccatalog.config import Config, Destination
from cccatalog.destinations.plan import target_for
from cccatalog.destinations.run import Mirrorer, enqueue
from cccatalog.redact import Redactor
from cccatalog.timestamps import rfc3339

PREFIX = "/api/v1/mirror/"
STATUSES = ("pending", "running", "done", "failed")
ENQUEUED = "enqueued; the mirror-drain phase will run them on the next interval"


class MirrorApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def handle(
    ctx: Any, method: str, rest: str, params: Mapping[str, str], authorize: Callable[[], None]
) -> tuple[int, Any]:
    """(status, body) for `/api/v1/mirror/<rest>`; raises MirrorApiError for the errors it answers.
    `ctx` is the API's context (its store, config and environment)."""
    parts = [unquote(p) for p in rest.strip("/").split("/")]
    reading = method in ("GET", "HEAD")
    if parts == ["destinations"] and reading:
        return 200, destinations(ctx.config, ctx.store)
    if parts == ["jobs"] and reading:
        return 200, jobs(ctx.config, ctx.store, params)
    if len(parts) == 2 and parts[0] == "jobs" and reading:
        return 200, job(ctx.store, parts[1])
    admin = (
        parts == ["drain"]
        or (len(parts) == 3 and parts[0] == "destinations" and parts[2] == "sync")
        or (
            len(parts) == 5
            and parts[0] == "destinations"
            and parts[2] == "codecollections"
            and parts[4] == "sync"
        )
    )
    if not admin:
        if parts[0] in ("destinations", "jobs") and not reading:
            raise MirrorApiError(405, "Method Not Allowed")
        raise MirrorApiError(404, "Not Found")
    if method != "POST":
        raise MirrorApiError(405, "Method Not Allowed")
    authorize()
    config: Config = ctx.config
    if parts == ["drain"]:
        workers = _int(params, "workers", None, 1, 32)
        held = ctx.run_locks.run("mirror").try_acquire()
        if held is None:
            raise MirrorApiError(
                409, "another mirror run holds the lock (the scheduler, or a sync); retry later"
            )
        try:
            mirrorer = Mirrorer(config, ctx.store, environ=ctx.environ, redactor=Redactor())
            ran = mirrorer.drain(workers=workers, holds_lock=True)
        finally:
            held.release()
        succeeded = sum(status == "done" for _, status in ran)
        return 200, {"jobs_run": len(ran), "jobs_succeeded": succeeded, "jobs_failed": len(ran) - succeeded}
    name, slug = parts[1], (parts[3] if len(parts) == 5 else None)
    if config.destination(name) is None:
        raise MirrorApiError(404, f"unknown destination: {name}")
    enqueued, already = enqueue(ctx.store, config, only_destination=name, only_slug=slug).get(name, (0, 0))
    body = {
        "destination": name,
        "codecollection_slug": slug,
        "jobs_enqueued": enqueued,
        "refs_already_mirrored": already,
        "detail": ENQUEUED,
    }
    return 202, body


def destinations(config: Config, store: Any) -> list[dict[str, Any]]:
    """The predecessor's `DestinationSummary` of each configured destination."""
    rows = store.list_destinations()
    out = []
    for d in config.destinations:
        row = rows.get(d.name)
        base_url, repo_key, prefix = _where(d)
        out.append(
            {
                "name": d.name,
                "type": d.type,
                "enabled": row.enabled if row else True,
                "base_url": base_url,
                "repo_key": repo_key,
                "path_prefix": prefix,
                "enable_xray_scan": d.enable_xray_scan,
                "last_synced": rfc3339(row.last_synced) if row else None,
                "last_sync_error": row.last_sync_error if row else None,
                "tracked_codecollections": list(d.mirror.codecollections) or ["*"],
                "mirrored_tag_count": row.mirrored_tag_count if row else 0,
            }
        )
    return out


def jobs(config: Config, store: Any, params: Mapping[str, str]) -> dict[str, Any]:
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise MirrorApiError(
            422, f"query parameter status: expected one of {', '.join(STATUSES)}, got {status!r}"
        )
    destination = params.get("destination") or None
    if (
        destination is not None
        and config.destination(destination) is None
        and destination not in store.list_destinations()
    ):
        raise MirrorApiError(404, f"unknown destination: {destination}")
    cc_slug = params.get("cc_slug") or None
    if cc_slug is not None and config.collection(cc_slug) is None:
        raise MirrorApiError(404, f"unknown codecollection: {cc_slug}")
    limit = _int(params, "limit", 100, 1, 1000)
    offset = _int(params, "offset", 0, 0, 2**31)
    total, found = store.list_mirror_jobs(
        status=status, destination=destination, cc_slug=cc_slug, limit=limit, offset=offset
    )
    return {"total": total, "items": [view(j) for j in found]}


def job(store: Any, given: str) -> dict[str, Any]:
    found = store.get_mirror_job(int(given)) if given.isdigit() and len(given) < 19 else None
    if found is None:
        if not given.isdigit():
            raise MirrorApiError(422, f"path parameter job_id: expected an integer, got {given!r}")
        raise MirrorApiError(404, f"unknown mirror job: {given}")
    return {**view(found), "log_text": found.log_text}


def view(j: MirrorJobRecord) -> dict[str, Any]:
    """The predecessor's `MirrorJobView`."""
    return {
        "id": j.id,
        "cc_slug": j.cc_slug,
        "destination": j.destination,
        "source_image_ref": j.source_image_ref,
        "target_image_ref": j.target_image_ref,
        "status": j.status,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "last_error": j.last_error,
        "created_at": rfc3339(j.created_at),
        "started_at": rfc3339(j.started_at),
        "finished_at": rfc3339(j.finished_at),
    }


def _where(d: Destination) -> tuple[str | None, str | None, str | None]:
    """(base_url, repo_key, path_prefix): Artifactory's as configured; a registry's URL and prefix."""
    if d.type == "jfrog":
        return d.base_url, d.repo_key, d.path_prefix
    target = target_for(d, "x", "x")
    return f"{target.scheme}://{target.host}", None, d.repository_prefix or None


def _int(params: Mapping[str, str], name: str, default: Any, lo: int, hi: int) -> Any:
    value = params.get(name)
    if value is None or value == "":
        return default
    if not value.lstrip("-").isdigit() or not lo <= int(value) <= hi:
        raise MirrorApiError(
            422, f"query parameter {name}: expected an integer from {lo} to {hi}, got {value!r}"
        )
    return int(value)
