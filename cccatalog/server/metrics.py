"""`GET /metrics`: what `serve` exposes to Prometheus, through prometheus-client's text exposition.

Each server has a registry of its own (never the library's global one), so a process can run several
servers and each counts its own requests. Two kinds of series:

- counted as requests end: requests by route class and status, bytes sent, the duration histogram,
  and 503 refusals of git requests. `observe_request` is called once per request, never per chunk,
  and the labelled children are looked up once and kept, so a request costs a few uncontended locks.
- read when scraped: upload-packs in flight and their cap, advertisement cache hits/misses, the
  config's last reload, and from the state (`cccatalog.status`, the same judgement as the status page
  and `cccatalog status`) per repository the time since its last successful sync and whether its last
  sync failed, per CodeCollection its active refs, the built time of latest and whether its last
  image poll failed.

Labels are bounded: a route *class* (never a raw path), a status code, a configured slug; never a
client address.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from cccatalog import __version__, status
from cccatalog.errors import CCCatalogError
from cccatalog.manifest import baked_at

if TYPE_CHECKING:
    from cccatalog.config import ServeConfig
    from cccatalog.server.admission import Admission
    from cccatalog.server.advert_cache import AdvertCache
    from cccatalog.server.api import ApiContext
    from cccatalog.server.cgi import HttpBackend
    from cccatalog.server.pack_cache import PackCache

log = logging.getLogger("cccatalog.serve")

# A `_created` series beside every counter and histogram doubles what Prometheus stores for nothing
# the process start time (process_start_time_seconds) does not already say.
disable_created_metrics()  # type: ignore[no-untyped-call]

ROUTE_CLASSES = (
    *("git-info-refs", "git-upload-pack", "git-head", "api-catalog", "api-git", "api-admin"),
    *("health", "ui", "metrics", "other"),
)
# From a ref advertisement (~1 ms from memory) to a full clone of a large repository (minutes).
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)
# The text format every Prometheus reads (2.x and 3.x); the names here never need 1.0.0's escaping.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def route_class(path: str, mount_path: str) -> str:
    """The class of a request path, one of ROUTE_CLASSES: what a label may say about a path."""
    if path.startswith(mount_path + "/"):
        for suffix, name in (("/info/refs", "git-info-refs"), ("/git-upload-pack", "git-upload-pack")):
            if path.endswith(suffix):
                return name
        return "git-head" if path.endswith("/HEAD") else "other"
    if path.startswith("/api/"):
        for prefix, name in (("/api/v1/git/", "api-git"), ("/api/v1/admin/", "api-admin")):
            if path.startswith(prefix) or path == prefix[:-1]:
                return name
        return "api-catalog"
    if path in ("/healthz", "/readyz"):
        return "health"
    if path in ("/", "/ui", "/ui/"):
        return "ui"
    return "metrics" if path == "/metrics" else "other"


def _status_label(code: int) -> str:
    return str(code) if 100 <= code <= 599 else "none"


class RecentEvents:
    """How many events happened in the last hour: 60 one-minute buckets, so memory stays flat."""

    def __init__(self) -> None:
        self._minutes = [(-1, 0)] * 60  # (minute number, count)
        self._lock = threading.Lock()

    def add(self, now: float | None = None) -> None:
        minute = int((time.time() if now is None else now) // 60)
        with self._lock:
            seen, count = self._minutes[minute % 60]
            self._minutes[minute % 60] = (minute, count + 1 if seen == minute else 1)

    def count(self, now: float | None = None) -> int:
        minute = int((time.time() if now is None else now) // 60)
        with self._lock:
            return sum(count for seen, count in self._minutes if minute - 60 < seen <= minute)


class ServerMetrics:
    """The metrics of one server: its registry, the per-request counters, and what is read at scrape."""

    def __init__(
        self,
        api: ApiContext,
        settings: ServeConfig,
        *,
        adverts: AdvertCache,
        backend: HttpBackend,
        admission: Admission | None = None,
        packs: PackCache | None = None,
    ) -> None:
        self.api, self.settings, self.adverts, self.backend = api, settings, adverts, backend
        self.admission, self.packs = admission, packs
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "cccatalog_http_requests",
            "HTTP requests answered, by route class and status code.",
            ["route", "status"],
            registry=r,
        )
        self.sent = Counter(
            "cccatalog_http_response_bytes", "Bytes of answers sent, by route class.", ["route"], registry=r
        )
        self.duration = Histogram(
            "cccatalog_http_request_duration_seconds",
            "From the request's head to the end of its answer.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "cccatalog_http_refused",
            "Git requests refused with 503 + Retry-After: the admission queue was full or the wait ran out.",
            ["route"],
            registry=r,
        )
        Info("cccatalog_build", "The cccatalog that is serving.", registry=r).info({"version": __version__})
        ProcessCollector(registry=r)
        r.register(_ScrapeTime(self))
        self.refused_recently = RecentEvents()
        self._children: dict[tuple[str, int], tuple[Counter, Counter, Histogram]] = {}

    def observe_request(self, route: str, status_code: int, sent: int, seconds: float | None) -> None:
        """Count one request that ended (`seconds` None: it never reached a handler)."""
        children = self._children.get((route, status_code))
        if children is None:  # once per (route, status): later requests skip the labels lookup
            children = (
                self.requests.labels(route, _status_label(status_code)),
                self.sent.labels(route),
                self.duration.labels(route),
            )
            self._children[(route, status_code)] = children
        requests, sent_bytes, duration = children
        requests.inc()
        if sent:
            sent_bytes.inc(sent)
        if seconds is not None:
            duration.observe(seconds)
        if status_code == 503 and route.startswith("git-"):
            self.refused.labels(route).inc()
            self.refused_recently.add()

    def uptime(self) -> float:
        return time.time() - self.started

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeTime(Collector):
    """The series read when Prometheus scrapes: server gauges, the config, and the state."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield GaugeMetricFamily(
            "cccatalog_upload_packs_in_flight", "git http-backend processes running now.", m.backend.running
        )
        yield GaugeMetricFamily(
            "cccatalog_upload_packs_max",
            "serve.max_concurrent_upload_packs: git backends allowed at once.",
            m.settings.max_concurrent_upload_packs,
        )
        if m.admission is not None:
            yield GaugeMetricFamily(
                "cccatalog_upload_packs_queued",
                "git requests waiting for a free slot now.",
                m.admission.queued,
            )
            yield CounterMetricFamily(
                "cccatalog_upload_packs_left_queue",
                "git requests whose client went away while they waited.",
                m.admission.left,
            )
        if m.packs is not None:
            for name, value, what in (
                ("hits", m.packs.hits, "Pack requests sent from a finished pack cache entry."),
                ("joined", m.packs.joined, "Pack requests that followed an identical answer being written."),
                ("made", m.packs.made, "Pack answers git was run for, into the pack cache."),
                ("evictions", m.packs.evicted, "Pack cache entries deleted to stay within the bound."),
                (
                    "bypassed",
                    m.packs.bypassed,
                    "Pack answers sent without the cache's disk: no room "
                    "within its bound, or a write failed.",
                ),
            ):
                yield CounterMetricFamily(f"cccatalog_pack_cache_{name}", what, value)
        yield CounterMetricFamily(
            "cccatalog_pack_hand_offs",
            "Pack answers git wrote to the client's socket itself (serve.pack_hand_off).",
            m.backend.hand_offs,
        )
        yield CounterMetricFamily(
            "cccatalog_advertisement_cache_hits", "Ref advertisements answered from memory.", m.adverts.hits
        )
        yield CounterMetricFamily(
            "cccatalog_advertisement_cache_misses",
            "Cacheable ref advertisements that had to run git.",
            m.adverts.misses,
        )
        live = m.api.live
        yield GaugeMetricFamily(
            "cccatalog_config_last_reload_success_timestamp_seconds",
            "When the config in effect was loaded (start-up or the last successful reload).",
            live.loaded_at,
        )
        yield GaugeMetricFamily(
            "cccatalog_config_last_reload_successful",
            "1 when the last (re)load of the config file succeeded; 0 when it failed and the previous "
            "config stays in effect.",
            0 if live.last_reload_error else 1,
        )
        yield from self._state()

    def _state(self) -> Iterator[Metric]:
        config = self.m.api.live.current
        budget = config.serve.freshness_budget_minutes * 60
        yield GaugeMetricFamily(
            "cccatalog_freshness_budget_seconds",
            "serve.freshness_budget_minutes: a mirror older than this is stale.",
            budget,
        )
        readable = GaugeMetricFamily(
            "cccatalog_state_readable",
            "1 when the state database answered for this scrape; 0 when it could not be read (the "
            "series below then come from the last good read, if any).",
            labels=(),
        )
        store = self.m.api.store
        try:
            report = status.collect(
                config,
                store,
                budget_seconds=budget,
                baked_at=baked_at(config.git.data_dir),
                servable=self.m.api.servable(config),
            )
        except CCCatalogError as exc:
            log.warning("metrics: cannot read the state: %s", exc)
            readable.add_metric([], 0)
            yield readable
            yield from self._last_read(store.last_read_at)
            return
        # a shared database that went away answers from its last good read: that is not a read now
        readable.add_metric([], 0 if store.unreachable() else 1)
        yield readable
        yield from self._last_read(store.last_read_at)
        yield from _repo_families(report)
        polled = {cc.slug for cc in config.polled_collections()}
        yield from _collection_families([c for c in report.collections if c.slug in polled])

    def _last_read(self, at: float | None) -> Iterator[Metric]:
        """When the state was last read, and how long ago (since start-up when it never was): what an
        alert on a database outage needs, whatever the last good read still answers."""
        now = time.time()
        yield GaugeMetricFamily(
            "cccatalog_state_last_read_timestamp_seconds",
            "When the state database last answered a read (0: not since start-up).",
            at or 0,
        )
        yield GaugeMetricFamily(
            "cccatalog_state_last_read_age_seconds",
            "Seconds since the state database last answered a read (since start-up when it never did).",
            now - at if at is not None else self.m.uptime(),
        )


def _repo_families(report: status.StatusReport) -> Iterator[Metric]:
    success = GaugeMetricFamily(
        "cccatalog_mirror_last_success_timestamp_seconds",
        "When the mirror last synced (or was imported) successfully; absent when it never was.",
        labels=["slug"],
    )
    age = GaugeMetricFamily(
        "cccatalog_mirror_seconds_since_last_success",
        "Seconds since the mirror last synced (or was imported) successfully; absent when it never was.",
        labels=["slug"],
    )
    failed = GaugeMetricFamily(
        "cccatalog_mirror_last_sync_failed", "1 when the mirror's last sync failed.", labels=["slug"]
    )
    servable = GaugeMetricFamily(
        "cccatalog_mirror_servable",
        "1 when the mirror is served (complete, and configured).",
        labels=["slug"],
    )
    for r in report.repos:
        if r.last_success_at is not None and r.age_seconds is not None:
            success.add_metric([r.slug], r.last_success_at.timestamp())
            age.add_metric([r.slug], r.age_seconds)
        failed.add_metric([r.slug], 1 if r.failed else 0)
        servable.add_metric([r.slug], 1 if r.servable else 0)
    yield from (success, age, failed, servable)


def _collection_families(collections: list[status.CollectionStatus]) -> Iterator[Metric]:
    refs = GaugeMetricFamily(
        "cccatalog_collection_active_refs",
        "Refs of the CodeCollection with an active image.",
        labels=["slug"],
    )
    built = GaugeMetricFamily(
        "cccatalog_collection_latest_built_timestamp_seconds",
        "When the image `latest` points at was built; absent when unknown.",
        labels=["slug"],
    )
    poll_failed = GaugeMetricFamily(
        "cccatalog_image_poll_failed",
        "1 when the last image poll of the CodeCollection failed (its refs are kept).",
        labels=["slug"],
    )
    for c in collections:
        refs.add_metric([c.slug], c.active_refs)
        if c.latest and c.latest.built_at:
            built.add_metric([c.slug], c.latest.built_at.timestamp())
        poll_failed.add_metric([c.slug], 1 if c.poll_error else 0)
    yield from (refs, built, poll_failed)
