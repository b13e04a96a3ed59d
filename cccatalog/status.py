"""Is everything fresh? Per repository and per CodeCollection, judged against a freshness budget, from
the config and the state alone (no network). `cccatalog status`, the status page and `/metrics` all ask
this module, so they can never disagree about what is stale.

A repository is
- `fresh` when its last successful sync (or import) is within the budget and its last sync succeeded;
- `failing` when it is within the budget but its last sync failed (it still serves what it had);
- `stale` when its last success is older than the budget, or it never synced successfully;
- `baked` when it was baked into the image and never synced here: its age is the release's, which
  only a new image or an import changes, so it is shown (with the bake time) but not judged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cccatalog.catalog.models import ImageRefRecord, MirrorStatus
from cccatalog.catalog.pointers import pointers
from cccatalog.catalog.store import Store
from cccatalog.config import CodeCollection, Config
from cccatalog.errors import UsageError
from cccatalog.gitmirror.servable import mirrored_slugs
from cccatalog.redact import strip_url_credentials
from cccatalog.timestamps import rfc3339


class Freshness(StrEnum):
    FRESH = "fresh"
    FAILING = "failing"
    STALE = "stale"
    BAKED = "baked"

    @property
    def judged_bad(self) -> bool:
        return self in (Freshness.FAILING, Freshness.STALE)


@dataclass(frozen=True, slots=True)
class RepoStatus:
    slug: str
    name: str
    visibility: str
    upstream_url: str | None
    freshness: Freshness
    head_commit: str | None = None
    default_branch: str | None = None
    last_success_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_error: str | None = None
    age_seconds: int | None = None
    baked_at: datetime | None = None
    # None when not known (the command line does not look at the mirrors on disk)
    servable: bool | None = None

    @property
    def failed(self) -> bool:
        return self.last_error is not None

    def problem(self, budget_seconds: int) -> str | None:
        """Why this repository fails a freshness check, in one line; None when it passes."""
        if self.freshness is Freshness.FAILING:
            return f"{self.slug}: its last sync failed: {self.last_error}"
        if self.freshness is not Freshness.STALE:
            return None
        if self.age_seconds is None:
            why = f": {self.last_error}" if self.last_error else ""
            return f"{self.slug}: never synced successfully{why}"
        failed = f"; its last sync failed: {self.last_error}" if self.last_error else ""
        return (
            f"{self.slug}: last successful sync {format_age(self.age_seconds)} ago, older than "
            f"{format_age(budget_seconds)}{failed}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "visibility": self.visibility,
            "upstream_url": self.upstream_url,
            "freshness": self.freshness.value,
            "head_commit": self.head_commit,
            "default_branch": self.default_branch,
            "last_success_at": rfc3339(self.last_success_at),
            "last_attempt_at": rfc3339(self.last_attempt_at),
            "age_seconds": self.age_seconds,
            "last_error": self.last_error,
            "baked_at": rfc3339(self.baked_at),
            "servable": self.servable,
        }


@dataclass(frozen=True, slots=True)
class ImagePointer:
    ref: str
    tag: str
    digest: str | None
    built_at: datetime | None

    @classmethod
    def of(cls, row: ImageRefRecord | None) -> ImagePointer | None:
        return None if row is None else cls(row.ref, row.image_tag, row.image_digest, row.image_built_at)

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "tag": self.tag, "digest": self.digest, "built_at": rfc3339(self.built_at)}


@dataclass(frozen=True, slots=True)
class CollectionStatus:
    slug: str
    name: str
    visibility: str
    image_registry: str | None
    latest: ImagePointer | None
    stable: ImagePointer | None
    active_refs: int
    last_poll_success_at: datetime | None = None
    poll_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "visibility": self.visibility,
            "image_registry": self.image_registry,
            "latest": self.latest.to_json() if self.latest else None,
            "stable": self.stable.to_json() if self.stable else None,
            "active_refs": self.active_refs,
            "last_poll_success_at": rfc3339(self.last_poll_success_at),
            "poll_error": self.poll_error,
        }


@dataclass(frozen=True, slots=True)
class StatusReport:
    config: Path
    state: str | None  # the state file, or the database (password masked); None: no state yet
    budget_seconds: int
    generated_at: datetime
    repos: Sequence[RepoStatus] = ()
    collections: Sequence[CollectionStatus] = ()
    notes: Sequence[str] = field(default_factory=tuple)

    @property
    def problems(self) -> list[str]:
        return [p for r in self.repos if (p := r.problem(self.budget_seconds))]

    @property
    def failed(self) -> bool:
        return any(r.freshness.judged_bad for r in self.repos)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": str(self.config),
            "state": str(self.state) if self.state else None,
            "generated_at": rfc3339(self.generated_at),
            "max_age_seconds": self.budget_seconds,
            "ok": not self.failed,
            "problems": self.problems,
            "notes": list(self.notes),
            "repos": [r.to_json() for r in self.repos],
            "collections": [c.to_json() for c in self.collections],
        }


def judge(age_seconds: int | None, *, failed: bool, baked: bool, budget_seconds: int) -> Freshness:
    if age_seconds is None:
        return Freshness.BAKED if baked and not failed else Freshness.STALE
    if age_seconds > budget_seconds:
        return Freshness.STALE
    return Freshness.FAILING if failed else Freshness.FRESH


def repo_status(
    cc: CodeCollection,
    mirror: MirrorStatus | None,
    *,
    now: datetime,
    budget_seconds: int,
    baked_at: datetime | None = None,
    servable: bool | None = None,
) -> RepoStatus:
    success = mirror.last_success_at if mirror else None
    age = max(0, int((now - success).total_seconds())) if success else None
    error = mirror.last_error if mirror else None
    baked = mirror is not None and mirror.last_action == "baked" and mirror.head_commit is not None
    freshness = judge(age, failed=error is not None, baked=baked, budget_seconds=budget_seconds)
    return RepoStatus(
        slug=cc.slug,
        name=cc.display_name,
        visibility=cc.visibility,
        upstream_url=strip_url_credentials(cc.git_url) if cc.git_url else None,
        freshness=freshness,
        head_commit=mirror.head_commit if mirror else None,
        default_branch=(mirror.default_branch or None) if mirror else None,
        last_success_at=success,
        last_attempt_at=mirror.last_attempt_at if mirror else None,
        last_error=error,
        age_seconds=age,
        baked_at=baked_at if freshness is Freshness.BAKED else None,
        servable=servable,
    )


def collection_status(cc: CodeCollection, store: Store) -> CollectionStatus:
    refs = [r for r in store.list_image_refs(cc.slug) if r.image_tag]
    latest, stable = pointers(refs)
    poll = store.get_image_sync(cc.slug)
    shown = latest or stable
    return CollectionStatus(
        slug=cc.slug,
        name=cc.display_name,
        visibility=cc.visibility,
        image_registry=shown.image_registry if shown else cc.image_registry,
        latest=ImagePointer.of(latest),
        stable=ImagePointer.of(stable),
        active_refs=len(refs),
        last_poll_success_at=poll.succeeded_at if poll else None,
        poll_error=poll.error if poll else None,
    )


def collect(
    config: Config,
    store: Store | None,
    *,
    budget_seconds: int,
    now: datetime | None = None,
    baked_at: datetime | None = None,
    servable: Callable[[str], bool] | None = None,
    include_hidden: bool = True,
) -> StatusReport:
    """The status of every mirrored repository and every CodeCollection of `config`, from `store`
    (None: no state file yet, so nothing has synced). `servable` answers whether a slug is served."""
    now = now or datetime.now(UTC)
    mirrors = {m.slug: m for m in store.list_mirrors()} if store else {}
    mirrored = mirrored_slugs(config)
    shown = [cc for cc in config.codecollections if include_hidden or cc.visibility != "hidden"]
    repos = [
        repo_status(
            cc,
            mirrors.get(cc.slug),
            now=now,
            budget_seconds=budget_seconds,
            baked_at=baked_at,
            servable=servable(cc.slug) if servable else None,
        )
        for cc in sorted(shown, key=lambda c: c.slug)
        if cc.slug in mirrored
    ]
    # collections whose images are polled, or that have images from before: the rest has none to show
    polled = {cc.slug for cc in config.polled_collections()}
    every = [collection_status(cc, store) for cc in sorted(shown, key=lambda c: c.slug)] if store else []
    collections = [c for c in every if c.slug in polled or c.active_refs]
    notes = []
    if not config.git.enabled:
        notes.append("git mirroring is off (git.enabled: false): no repositories to check")
    if store is None:
        state = config.state
        missing = (
            f"no state file at {state.path}"
            if state.url is None
            else f"no cccatalog state in {state.display}"
        )
        notes.append(f"{missing}: nothing has been synced yet")
    return StatusReport(
        config.path, store.location if store else None, budget_seconds, now, repos, collections, tuple(notes)
    )


def status_from_state(config: Config, *, max_age_seconds: int | None = None) -> StatusReport:
    """`cccatalog status`: the state file is read, never created or written; no network, no git.
    `max_age_seconds` replaces the config's budget (`serve.freshness_budget_minutes`)."""
    from cccatalog.manifest import baked_at

    budget = max_age_seconds or config.serve.freshness_budget_minutes * 60
    from cccatalog.replica import mirror_volume, replica_id

    store = Store.open(config.state, read_only=True, volume=mirror_volume(config, replica_id(config)))
    try:
        return collect(config, store, budget_seconds=budget, baked_at=baked_at(config.git.data_dir))
    finally:
        if store is not None:
            store.close()


# --- durations -----------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, *, option: str = "--max-age") -> int:
    """`90m`, `2h`, `1d12h`, `3600s` -> seconds. A bare number has no unit and is refused."""
    value = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        raise UsageError(
            f"{option}: expected a duration such as 90m, 2h or 1d (units s, m, h, d, w), got {text!r}"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"{option}: the duration must be longer than zero, got {text!r}")
    return seconds


def format_age(seconds: int) -> str:
    """`45s`, `12m`, `3h 5m`, `4d 2h`: two units at most, the way a person reads an age."""
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours == 0:
        return f"{minutes}m"
    if days == 0:
        rest = minutes % 60
        return f"{hours}h {rest}m" if rest else f"{hours}h"
    rest = hours % 24
    return f"{days}d {rest}h" if rest else f"{days}d"
