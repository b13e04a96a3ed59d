"""The mirror half of a sync, as `cccatalog sync` and serve's mirror runs do it: enqueue what each
destination lacks, drain the pending jobs under the mirror run lock, and say per destination what
happened (a summary line, a table row, `--json`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from cccatalog.catalog.store import Store
from cccatalog.config import Config
from cccatalog.destinations.run import SKIPPED, ClientFactory, Mirrorer, Progress, enqueue
from cccatalog.redact import Redactor
from cccatalog.runlocks import Locks


@dataclass(slots=True)
class DestinationRun:
    """What one run did for one destination: the summary line of `sync` and its `--json`."""

    name: str
    jobs_enqueued: int = 0
    refs_already_mirrored: int = 0
    copied: int = 0
    already_there: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class MirrorReport:
    destinations: list[DestinationRun] = field(default_factory=list)
    # why nothing was copied this time (another mirror run holds the lock), or None
    skipped: str | None = None

    @property
    def failed(self) -> bool:
        return any(d.failed for d in self.destinations)

    def to_json(self) -> list[dict[str, object]]:
        return [
            {**d.to_json(), **({"skipped": self.skipped} if self.skipped else {})} for d in self.destinations
        ]


def run_mirrors(
    config: Config,
    store: Store,
    *,
    environ: Mapping[str, str],
    redactor: Redactor,
    only_slugs: Sequence[str] = (),
    progress: Progress | None = None,
    client_factory: ClientFactory | None = None,
    locks: Locks | None = None,
) -> MirrorReport:
    """The mirror half of a sync: enqueue what each destination lacks, drain every pending job, and
    say per destination what happened. With `locks`, under the mirror run lock (skipped, with a
    note, while another run holds it); without, the caller holds it (serve's jobs)."""
    held = None
    if locks is not None:
        held = locks.run("mirror").try_acquire()
        if held is None:
            report = MirrorReport([DestinationRun(d.name) for d in config.destinations])
            report.skipped = (
                "another mirror run (serve's scheduler, another sync) holds the lock; nothing copied"
            )
            return report
    try:
        return _run_mirrors(config, store, environ, redactor, only_slugs, progress, client_factory)
    finally:
        if held is not None:
            held.release()


def _run_mirrors(  # noqa: PLR0917 - run_mirrors's arguments, passed on
    config: Config,
    store: Store,
    environ: Mapping[str, str],
    redactor: Redactor,
    only_slugs: Sequence[str],
    progress: Progress | None,
    client_factory: ClientFactory | None,
) -> MirrorReport:
    report = MirrorReport()
    runs = {d.name: DestinationRun(d.name) for d in config.destinations}
    slugs: list[str | None] = [*only_slugs] or [None]
    for slug in slugs:
        for name, (enqueued, already) in enqueue(store, config, only_slug=slug).items():
            runs[name].jobs_enqueued += enqueued
            runs[name].refs_already_mirrored += already
    mirrorer = Mirrorer(
        config, store, environ=environ, redactor=redactor, client_factory=client_factory, progress=progress
    )
    for job, status in mirrorer.drain(only_slugs=only_slugs, holds_lock=True):
        run = runs.get(job.destination)
        if run is None:
            continue
        if status == "done":
            finished = store.get_mirror_job(job.id)
            if finished is not None and finished.log_text == SKIPPED:
                run.already_there += 1
            else:
                run.copied += 1
        else:
            run.failed += 1
            finished = store.get_mirror_job(job.id)
            if finished is not None and finished.last_error:
                run.errors.append(f"{job.target_image_ref}: {finished.last_error}")
    report.destinations = list(runs.values())
    return report
