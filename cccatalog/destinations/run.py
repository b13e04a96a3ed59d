"""Mirror jobs: enqueued from the plan, then drained by copying each image with cccatalog's own copy
(`oci.copy`), as the predecessor's two phases did. `sync` (through `destinations.sync`), serve's
scheduler and the admin API all run these; the state (`Store`) keeps the jobs, so any replica answers
about them.

One job: ask the destination whether it holds the tag (Artifactory's Docker API path for `jfrog`, the
registry's manifest URL otherwise): 200 = there (recorded, nothing copied), 404 = copy, 401/403 = a
permission error naming the URL, anything else = an error, never "copy again". After a copy to
Artifactory with `enable_xray_scan`, Xray is asked to scan; a failure to ask is a warning in the job's
log, not a failed mirror.

Credentials go only where they belong (`destinations.credentials`); every error stored or shown is
redacted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from cccatalog.catalog.models import MirrorJobRecord, NewMirrorJob
from cccatalog.catalog.store import Store
from cccatalog.config import Config, Destination
from cccatalog.destinations.credentials import destination_auth, source_auth
from cccatalog.destinations.plan import Target, exists_url, plan, xray_request
from cccatalog.errors import CCCatalogError, RegistryError
from cccatalog.oci.auth import RegistryAuth
from cccatalog.oci.client import RegistryClient
from cccatalog.oci.copy import CopyProgress, copy_image
from cccatalog.oci.reference import Repository, parse_reference
from cccatalog.redact import Redactor

log = logging.getLogger("cccatalog.destinations")

SKIPPED = "[skip: already exists on destination]"
Progress = Callable[[CopyProgress], None]
# Build a registry client from "which credentials go to which host" (tests pass fewer retries).
ClientFactory = Callable[[Callable[[str], RegistryAuth | None]], RegistryClient]


def save_destinations(store: Store, config: Config) -> None:
    """One state row per configured destination; its config without secrets (only variable names)."""
    store.save_destinations(
        (d.name, d.type, json.dumps(asdict(d), sort_keys=True, default=list)) for d in config.destinations
    )


def enqueue(
    store: Store, config: Config, *, only_destination: str | None = None, only_slug: str | None = None
) -> dict[str, tuple[int, int]]:
    """Add jobs for the builds each destination lacks: name -> (jobs enqueued, refs already mirrored)."""
    save_destinations(store, config)
    counts: dict[str, tuple[int, int]] = {}
    for destination in config.destinations:
        if only_destination is not None and destination.name != only_destination:
            continue
        wanted = []
        for cc in config.codecollections:
            if only_slug is not None and cc.slug != only_slug:
                continue
            for work in plan(destination, cc.slug, store.list_image_refs(cc.slug)):
                wanted.append(
                    NewMirrorJob(
                        work.destination, work.slug, work.source_ref, work.source_image_tag, work.target.ref
                    )
                )
        counts[destination.name] = store.enqueue_mirror_jobs(wanted)
    return counts


class Mirrorer:
    """Drains mirror jobs: claims them from the state and copies each, `workers` at a time."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        environ: Mapping[str, str],
        redactor: Redactor,
        client_factory: ClientFactory | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config, self.store, self.environ, self.redactor = config, store, environ, redactor
        self.client_factory = client_factory or (lambda auth_for: RegistryClient(auth_for=auth_for))
        self.progress = progress

    def drain(
        self,
        *,
        workers: int | None = None,
        only_destination: str | None = None,
        only_slugs: Sequence[str] = (),
        holds_lock: bool = False,
    ) -> list[tuple[MirrorJobRecord, str]]:
        """Run pending jobs until none is left, each at most once (a failed one is retried by the
        next drain, as the predecessor's next pass did); returns each job run with its status now.

        `holds_lock`: the caller holds the mirror run lock (`Locks.run("mirror")`), as every drain
        does that may be running elsewhere, so a job still marked running was left by a run that
        was killed: it is taken over at once. Without the lock, only once it is far past its time."""
        workers = workers or self.config.scheduler.mirror_workers
        ran: list[tuple[MirrorJobRecord, str]] = []
        stale = timedelta(seconds=self.config.scheduler.per_job_timeout_seconds * 2 + 60)
        stale_before = datetime.now(UTC) + timedelta(seconds=1) if holds_lock else datetime.now(UTC) - stale
        with ThreadPoolExecutor(workers, thread_name_prefix="mirror") as pool:
            while True:
                jobs = self.store.claim_mirror_jobs(
                    limit=max(workers * 4, 8),
                    stale_before=stale_before,
                    destination=only_destination,
                    slugs=only_slugs,
                    exclude=[job.id for job, _ in ran],
                )
                if not jobs:
                    return ran
                ran.extend(pool.map(self.run_one, jobs))

    def run_one(self, job: MirrorJobRecord) -> tuple[MirrorJobRecord, str]:
        lines: list[str] = []
        digest = error = None
        try:
            digest = self._mirror(job, lines)
        except (CCCatalogError, ValueError) as exc:
            error = self.redactor(str(exc))
        except Exception as exc:  # a job that fails must say so, not stay "running" until it is stale
            log.exception("mirror job %d failed unexpectedly", job.id)
            error = self.redactor(f"{type(exc).__name__}: {exc}")
        log_text = self.redactor("\n".join(lines))
        status = self.store.finish_mirror_job(job, error=error, log_text=log_text, target_digest=digest)
        if error:
            log.warning(
                "mirror job %d (%s -> %s) failed: %s",
                job.id,
                job.source_image_ref,
                job.target_image_ref,
                error,
            )
        return job, status

    def _mirror(self, job: MirrorJobRecord, lines: list[str]) -> str | None:
        destination = self.config.destination(job.destination)
        if destination is None:
            raise ValueError(f"destination {job.destination!r} is no longer configured")
        target = _target(destination, job.target_image_ref)
        dst_repo = Repository(
            target.host, target.path, plain_http=target.scheme == "http", given=f"{target.host}/{target.path}"
        )
        with self.client_factory(destination_auth(destination, self.environ, self.redactor)) as dst:
            there = self._exists(dst, dst_repo, destination, target)
            if there is not None:
                lines.append(SKIPPED)
                return there
            src_repo, reference = self._source(job)
            with self.client_factory(
                source_auth(self.config, job.cc_slug, self.environ, self.redactor)
            ) as src:
                result = copy_image(
                    src,
                    src_repo,
                    reference,
                    dst,
                    dst_repo,
                    target.tag,
                    workers=4,
                    progress=self._watch(job),
                )
            lines.append(
                f"copied {job.source_image_ref} -> {job.target_image_ref} ({result.digest}): "
                f"{result.blobs_copied} blobs copied, {result.blobs_skipped} already there, "
                f"{result.blobs_mounted} mounted, {result.bytes_copied} bytes"
            )
            if destination.type == "jfrog" and destination.enable_xray_scan:
                lines.append(self._xray(dst, dst_repo, destination, target))
            return result.digest

    def _watch(self, job: MirrorJobRecord) -> Progress:
        """The copy's progress callback: passed on to ours, and the job's deadline checked after each
        blob (`per_job_timeout_seconds`). Past it the copy stops before any manifest is pushed, so the
        tag stays as it was; the next attempt skips the blobs already there."""
        seconds = self.config.scheduler.per_job_timeout_seconds
        deadline = time.monotonic() + seconds

        def progress(event: CopyProgress) -> None:
            if self.progress is not None:
                self.progress(event)
            if time.monotonic() > deadline and event.blobs_done < event.blobs_total:
                raise RegistryError(
                    f"{job.target_image_ref}: the copy ran past per_job_timeout_seconds ({seconds} s); the "
                    "blobs copied so far are kept for the next attempt"
                )

        return progress

    def _exists(
        self, client: RegistryClient, repo: Repository, destination: Destination, target: Target
    ) -> str | None:
        """The digest the destination holds under the tag, None when it holds none (404); raises for
        anything else, so an unhealthy destination is never pushed to again and again."""
        url = exists_url(destination, target)
        try:
            status, digest = client.head_status(repo, url)
        except RegistryError as exc:
            if exc.status in (401, 403):
                raise RegistryError(_permission(destination, url, exc.status), status=exc.status) from None
            raise
        if status == 200:
            return digest or client.find_manifest(repo, target.tag)
        if status == 404:
            return None
        if status in (401, 403):
            raise RegistryError(_permission(destination, url, status), status=status)
        raise RegistryError(
            f"destination {destination.name!r}: {url} answered HTTP {status}; nothing is pushed until it "
            "answers 200 or 404",
            status=status,
        )

    def _xray(
        self, client: RegistryClient, repo: Repository, destination: Destination, target: Target
    ) -> str:
        url, body = xray_request(destination, target)
        try:
            status = client.post_json(repo, url, body)
        except RegistryError as exc:
            return f"[xray scan trigger failed: {exc}]"
        if status >= 300:
            return f"[xray scan trigger failed: {url} answered HTTP {status}]"
        return f"xray scan requested for {target.ref}"

    def _source(self, job: MirrorJobRecord) -> tuple[Repository, str]:
        name, _, digest = job.source_image_ref.partition("@")
        cc = self.config.collection(job.cc_slug)
        source = self.config.source(cc.source) if cc else None
        repo, tag = parse_reference(name, allow_plain_http=bool(source and source.plain_http))
        reference = digest or tag
        if not reference:
            raise ValueError(f"{job.source_image_ref}: names no tag or digest to copy")
        return repo, reference


def _target(destination: Destination, ref: str) -> Target:
    """A job's target back from its text (`host/path:tag`), spoken to with the destination's scheme."""
    rest, _, tag = ref.rpartition(":")
    host, _, path = rest.partition("/")
    if not (tag and host and path):
        raise ValueError(f"{ref!r} is not a target image reference (host/path:tag)")
    scheme = "https"
    if destination.type == "jfrog" and (destination.base_url or "").startswith("http://"):
        scheme = "http"
    elif destination.type == "registry":
        scheme = parse_reference(rest)[0].base_url.partition(":")[0]
    return Target(host, path, tag, scheme)


def _permission(destination: Destination, url: str, status: int) -> str:
    return (
        f"destination {destination.name!r} cannot read {url}: HTTP {status}; check that its credentials "
        f"may read and write the repository"
    )
