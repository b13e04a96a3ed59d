"""The image half of `sync`: the newest build of every ref of every collection, into the state file.

Sources: `oci` (a registry, resolved by `cccatalog.oci.resolve`), `static` (the predecessor's
`static_path` JSON) and `upstream` (another catalog's API, `cccatalog.catalog.upstream`). A source
that fails as a whole, or answers with no builds at all, keeps the collection's previous refs (the
failure is recorded); otherwise refs gone from the source become inactive.

The flags are the predecessor's: `is_latest` on the default ref's row; `is_stable` on the row `stable`
points at (a static file's `stable_ref`; else the highest release semver ref; else latest);
`is_prerelease` on every row that is neither the stable one nor a release tag — branch builds are
pre-releases — and on release candidates (`v1.2.0-rc1`), which the predecessor got wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.pointers import pointers
from cccatalog.catalog.store import Store
from cccatalog.catalog.upstream import UpstreamCatalog
from cccatalog.config import CodeCollection, Config, Source
from cccatalog.errors import CCCatalogError
from cccatalog.oci.auth import source_auth
from cccatalog.oci.cache import BlobCache
from cccatalog.oci.client import RegistryClient
from cccatalog.oci.reference import parse_reference
from cccatalog.oci.resolve import Build, RefResolution, parse_created, resolve_repository
from cccatalog.oci.tags import CanonicalTag, catalog_prerelease, parse_tag, stable_ref
from cccatalog.redact import Redactor


@dataclass(frozen=True, slots=True)
class ImageSyncResult:
    slug: str
    source: str
    refs: int = 0
    deactivated: int = 0
    latest_tag: str | None = None
    stable_tag: str | None = None
    duration_s: float = 0.0
    error: str | None = None
    note: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_json(self) -> dict[str, object]:
        return {
            "slug": self.slug,
            "source": self.source,
            "refs": self.refs,
            "deactivated": self.deactivated,
            "latest_tag": self.latest_tag,
            "stable_tag": self.stable_tag,
            "duration_s": self.duration_s,
            "error": self.error,
            "note": self.note,
        }


def records(
    cc: CodeCollection,
    resolutions: Sequence[RefResolution],
    *,
    latest: str | None = None,
    stable: str | None = None,
    semver_stable: bool = True,
    ref_types: Mapping[str, str] | None = None,
) -> list[ImageRefRecord]:
    """One row per ref: its newest build, flagged as the module says. `latest` (default: the
    collection's default_ref) names the latest ref; `stable` the stable one, else (`semver_stable`)
    the highest release semver ref, else latest. `ref_types` overrides the ref type derived from the
    ref's name (a static file says it)."""
    names = {r.ref for r in resolutions}
    latest = latest or cc.default_ref
    if stable not in names:
        stable = stable_ref(names) if semver_stable else None
    stable = stable or (latest if latest in names else None)
    rows = []
    for r in resolutions:
        ref_type = (ref_types or {}).get(r.ref) or r.newest.tag.ref_type
        rows.append(
            ImageRefRecord(
                slug=cc.slug,
                ref=r.ref,
                ref_type=ref_type,
                image_registry=cc.image_registry,
                image_tag=r.newest.tag.tag,
                image_digest=r.newest.digest,
                commit_hash=r.newest.tag.commit,
                rt_revision=r.newest.tag.rt_revision,
                image_built_at=r.newest.built_at,
                built_at_source=r.newest.source,
                is_latest=r.ref == latest,
                is_prerelease=catalog_prerelease(r.ref, ref_type, is_stable=r.ref == stable),
                is_stable=r.ref == stable,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class StaticRefs:
    """A static_path file: the newest entry of each ref, and the refs the file names."""

    resolutions: list[RefResolution]
    ref_types: dict[str, str]
    default_ref: str | None
    stable_ref: str | None


def static_refs(path: Path) -> StaticRefs:
    """The predecessor's static source: `{"default_ref", "stable_ref", "refs": [{ref, ref_type, commit,
    rt_revision, image_tag, image_digest, built_at}]}`. Of several entries of one ref the newest
    `built_at` wins; entries without one rank below dated ones, and among them the last listed wins
    (the predecessor's rule)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CCCatalogError(f"static_path {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CCCatalogError(f"static_path {path}: invalid JSON at line {exc.lineno}") from None
    except RecursionError:
        raise CCCatalogError(f"static_path {path}: JSON nested too deeply") from None
    entries = data.get("refs") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(entries, list):
        raise CCCatalogError(f"static_path {path}: expected an object with a 'refs' list")
    by_ref: dict[str, list[tuple[int, Build]]] = {}
    ref_types: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("ref"), str) or not entry.get("image_tag"):
            raise CCCatalogError(f"static_path {path}: refs[{i}] needs at least 'ref' and 'image_tag'")
        tag = str(entry["image_tag"])
        parsed = parse_tag(tag)
        commit = entry.get("commit") or (parsed.commit if parsed else "")
        rt_revision = entry.get("rt_revision") or (parsed.rt_revision if parsed else "")
        canonical = CanonicalTag(tag, entry["ref"], str(commit), str(rt_revision))
        built_at = parse_created(entry.get("built_at"))
        build = Build(canonical, entry.get("image_digest"), built_at, "static" if built_at else "unknown")
        by_ref.setdefault(entry["ref"], []).append((i, build))
        if isinstance(entry.get("ref_type"), str) and entry["ref_type"]:
            ref_types[entry["ref"]] = entry["ref_type"]
    resolutions = [
        RefResolution(ref, max(builds, key=_listed_rank)[1], tuple(b for _, b in builds))
        for ref, builds in sorted(by_ref.items())
    ]
    return StaticRefs(resolutions, ref_types, _name(data, "default_ref"), _name(data, "stable_ref"))


def _listed_rank(item: tuple[int, Build]) -> tuple[datetime, int]:
    position, build = item
    return (build.built_at or datetime.min.replace(tzinfo=UTC), position)


def _name(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


class ImageSyncer:
    """Polls every collection's images and writes the newest build per ref to `store`."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        cache: BlobCache | None,
        environ: Mapping[str, str],
        redactor: Redactor,
        client_factory: Callable[[Source], RegistryClient] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.cache = cache
        self.environ = environ
        self.redactor = redactor
        self.client_factory = client_factory or self._client

    def _client(self, source: Source) -> RegistryClient:
        return RegistryClient(auth_for=source_auth(source, self.environ, self.redactor), cache=self.cache)

    def plan(self, only: Sequence[str] = ()) -> list[CodeCollection]:
        """Collections with something to poll (`Config.polled_collections`)."""
        return self.config.polled_collections(only)

    def run(self, collections: Sequence[CodeCollection], *, jobs: int = 4) -> list[ImageSyncResult]:
        clients: dict[str, RegistryClient] = {}
        catalogs: dict[str, UpstreamCatalog] = {}
        for cc in collections:
            source = self.config.source(cc.source)
            if source and source.type == "oci" and source.name not in clients:
                clients[source.name] = self.client_factory(source)
            if source and source.type == "upstream" and source.name not in catalogs:
                catalogs[source.name] = UpstreamCatalog(source, environ=self.environ, redactor=self.redactor)

        def one(cc: CodeCollection) -> ImageSyncResult:
            return self.sync_one(cc, clients.get(cc.source), catalogs.get(cc.source))

        try:
            with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="images") as pool:
                return list(pool.map(one, collections))
        finally:
            for client in clients.values():
                client.close()
            for catalog in catalogs.values():
                catalog.close()

    def _rows(
        self, cc: CodeCollection, client: RegistryClient | None, catalog: UpstreamCatalog | None
    ) -> list[ImageRefRecord]:
        source = self.config.source(cc.source)
        if catalog is not None and source is not None and (url := source.upstream_for(cc)):
            return catalog.refs(cc, url)
        if client is not None and cc.image_registry:
            repo, _ = parse_reference(cc.image_registry, allow_plain_http=bool(source and source.plain_http))
            return records(cc, resolve_repository(client, repo))
        if cc.static_path:
            found = static_refs(cc.static_path)
            # the file names its stable ref; without one the predecessor's stable was latest
            return records(
                cc,
                found.resolutions,
                latest=found.default_ref,
                stable=found.stable_ref,
                semver_stable=False,
                ref_types=found.ref_types,
            )
        return []

    def sync_one(
        self, cc: CodeCollection, client: RegistryClient | None, catalog: UpstreamCatalog | None = None
    ) -> ImageSyncResult:
        started, attempted_at = time.monotonic(), datetime.now(UTC)
        try:
            rows = self._rows(cc, client, catalog)
        except (CCCatalogError, OSError) as exc:
            error = self.redactor(str(exc))
            self.store.record_image_failure(cc.slug, error=error, attempted_at=attempted_at)
            return ImageSyncResult(cc.slug, cc.source, error=error, duration_s=time.monotonic() - started)
        note = None
        if not rows:
            note = "the source listed no builds: previous refs kept (treated as transient)"
        upserted, deactivated = self.store.replace_image_refs(
            cc.slug, rows, synced_at=datetime.now(UTC), deactivate_missing=bool(rows)
        )
        latest, stable = pointers(rows)
        return ImageSyncResult(
            cc.slug,
            cc.source,
            upserted,
            deactivated,
            latest.image_tag if latest else None,
            stable.image_tag if stable else None,
            duration_s=round(time.monotonic() - started, 3),
            note=note,
        )
