"""The request paths that keep resolve-latest fast, against a real distribution 2.8: a first run GETs
each candidate's manifest by tag (no HEAD before it), a second run HEADs only; the tag memory beside
the cache when it is missing, stale, damaged or partial; and the per-host limit on requests in flight."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cccatalog.oci.cache import BlobCache
from cccatalog.oci.client import DEFAULT_PER_HOST, RegistryClient
from cccatalog.oci.reference import Repository, parse_reference
from cccatalog.oci.resolve import RefResolution, resolve_repository
from tests.registry import PushedImage, RunningRegistry, push_image, registry_client, tag_existing


def unique(prefix: str) -> str:
    return f"speed-{prefix}/{uuid.uuid4().hex[:10]}"


def repository(registry: RunningRegistry, repo: str) -> Repository:
    parsed, _ = parse_reference(f"{registry.host}/{repo}")
    return parsed


def resolve_once(
    registry: RunningRegistry, repo: str, cache: BlobCache, *, refs: list[str] | None = None
) -> tuple[dict[str, RefResolution], dict[str, int]]:
    with RegistryClient(cache=cache) as client:
        resolved = resolve_repository(client, repository(registry, repo), refs=refs)
        return {r.ref: r for r in resolved}, dict(client.counts)


def push_builds(registry: RunningRegistry, repo: str) -> dict[str, PushedImage]:
    """main: 3 builds (one an index), dev: 2, v1.0.0: 1 -> 5 candidates, 6 manifests (the index's child)."""
    pushed = [
        push_image(registry, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z"),
        push_image(registry, repo, "main-bbbbbbb-1111111", created="2024-02-01T00:00:00Z", kind="oci-index"),
        push_image(registry, repo, "main-ccccccc-1111111", created="2024-03-01T00:00:00Z", kind="docker-v2"),
        push_image(registry, repo, "dev-ddddddd-1111111", created="2024-01-01T00:00:00Z"),
        push_image(registry, repo, "dev-eeeeeee-1111111", created="2023-01-01T00:00:00Z"),
        push_image(registry, repo, "v1.0.0-fffffff-1111111", created="2023-01-01T00:00:00Z"),
    ]
    return {image.tag: image for image in pushed}


CANDIDATES = 5
FIRST_RUN = {"GET tags": 1, "GET manifest": CANDIDATES + 1, "GET blob": CANDIDATES}
WARM_RUN = {"GET tags": 1, "HEAD manifest-head": CANDIDATES}


@pytest.fixture
def builds(registry_anon: RunningRegistry) -> tuple[str, dict[str, PushedImage]]:
    repo = unique("builds")
    return repo, push_builds(registry_anon, repo)


def test_first_run_gets_each_manifest_by_tag_and_never_heads(
    registry_anon: RunningRegistry, builds: tuple[str, dict[str, PushedImage]], tmp_path: Path
) -> None:
    repo, pushed = builds

    resolved, counts = resolve_once(registry_anon, repo, BlobCache(tmp_path / "cache"))

    assert counts == FIRST_RUN
    found = {b.tag.tag: b for r in resolved.values() for b in r.candidates if b.digest}
    assert {tag: b.digest for tag, b in found.items()} == {
        tag: image.digest for tag, image in pushed.items() if not tag.startswith("v1.0.0")
    }  # the digest a GET by tag brings is the one the registry stores
    assert resolved["main"].newest.tag.tag == "main-ccccccc-1111111"


def test_second_run_heads_each_candidate_and_nothing_else(
    registry_anon: RunningRegistry, builds: tuple[str, dict[str, PushedImage]], tmp_path: Path
) -> None:
    repo, _ = builds
    cache = BlobCache(tmp_path / "cache")
    first, _ = resolve_once(registry_anon, repo, cache)

    second, counts = resolve_once(registry_anon, repo, cache)

    assert counts == WARM_RUN
    assert second == first


def test_cache_without_tag_memory_gets_by_tag_and_reuses_the_cached_documents(
    registry_anon: RunningRegistry, builds: tuple[str, dict[str, PushedImage]], tmp_path: Path
) -> None:
    repo, _ = builds
    cache = BlobCache(tmp_path / "cache")
    first, _ = resolve_once(registry_anon, repo, cache)
    shutil.rmtree(cache.root / "tags")  # a cache made before tags were remembered

    again, counts = resolve_once(registry_anon, repo, cache)

    # one GET per candidate instead of a HEAD; the index's child and the configs come from the cache
    assert counts == {"GET tags": 1, "GET manifest": CANDIDATES}
    assert again == first
    assert resolve_once(registry_anon, repo, cache)[1] == WARM_RUN  # remembered again


def test_remembered_tag_whose_documents_left_the_cache_is_got_by_tag(
    registry_anon: RunningRegistry, builds: tuple[str, dict[str, PushedImage]], tmp_path: Path
) -> None:
    repo, _ = builds
    cache = BlobCache(tmp_path / "cache")
    first, _ = resolve_once(registry_anon, repo, cache)
    shutil.rmtree(cache.root / "sha256")

    again, counts = resolve_once(registry_anon, repo, cache)

    assert counts == FIRST_RUN  # no HEAD that would buy nothing
    assert again == first


def test_damaged_tag_memory_is_ignored_and_rewritten(
    registry_anon: RunningRegistry, builds: tuple[str, dict[str, PushedImage]], tmp_path: Path
) -> None:
    repo, _ = builds
    cache = BlobCache(tmp_path / "cache")
    first, _ = resolve_once(registry_anon, repo, cache)
    (memory,) = (cache.root / "tags").iterdir()
    memory.write_text('{"repository": "truncated", "tags": {')

    again, counts = resolve_once(registry_anon, repo, cache)

    assert counts == {"GET tags": 1, "GET manifest": CANDIDATES}
    assert again == first
    assert resolve_once(registry_anon, repo, cache)[1] == WARM_RUN


def test_resolving_one_ref_keeps_what_is_remembered_of_the_others(
    registry_anon: RunningRegistry, builds: tuple[str, dict[str, PushedImage]], tmp_path: Path
) -> None:
    repo, _ = builds
    cache = BlobCache(tmp_path / "cache")
    resolve_once(registry_anon, repo, cache, refs=["dev"])

    _, only_main = resolve_once(registry_anon, repo, cache, refs=["main"])
    _, everything = resolve_once(registry_anon, repo, cache)

    assert only_main == {"GET tags": 1, "GET manifest": 4, "GET blob": 3}  # main's first visit
    assert everything == WARM_RUN  # dev's memory survived the run that only looked at main


def test_tag_deleted_from_the_registry_is_forgotten(registry_anon: RunningRegistry, tmp_path: Path) -> None:
    repo = unique("forget")
    kept = push_image(registry_anon, repo, "main-aaaaaaa-1111111", created="2024-01-01T00:00:00Z")
    push_image(registry_anon, repo, "main-bbbbbbb-1111111", created="2024-02-01T00:00:00Z")
    gone = push_image(registry_anon, repo, "main-ccccccc-1111111", created="2024-03-01T00:00:00Z")
    cache = BlobCache(tmp_path / "cache")
    resolve_once(registry_anon, repo, cache)
    with registry_client(registry_anon) as client:
        client.delete(f"/v2/{repo}/manifests/{gone.digest}").raise_for_status()

    resolved, counts = resolve_once(registry_anon, repo, cache)

    assert counts == {"GET tags": 1, "HEAD manifest-head": 2}
    assert resolved["main"].newest.tag.tag == "main-bbbbbbb-1111111"
    remembered = cache.tag_digests(f"{registry_anon.host}/{repo}")
    assert set(remembered) == {kept.tag, "main-bbbbbbb-1111111"}


def test_tag_memory_is_per_repository_and_holds_only_digests(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    digest = "sha256:" + "a" * 64
    cache.put_tag_digests("ghcr.io/org/one", {"main-aaaaaaa-1111111": digest, "odd": "md5:abc"})

    assert cache.tag_digests("ghcr.io/org/one") == {"main-aaaaaaa-1111111": digest}
    assert cache.tag_digests("ghcr.io/org/two") == {}
    assert cache.tag_digests("ghcr.io/org/one/..") == {}


def test_unwritable_cache_costs_requests_not_the_answer(
    registry_anon: RunningRegistry, builds: tuple[str, dict[str, PushedImage]], tmp_path: Path
) -> None:
    repo, _ = builds
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")

    first, _ = resolve_once(registry_anon, repo, BlobCache(blocker / "cache"))
    again, counts = resolve_once(registry_anon, repo, BlobCache(blocker / "cache"))

    assert again == first
    assert counts == FIRST_RUN


class InFlight(httpx.HTTPTransport):
    """The real transport, counting requests in flight; each waits `delay` first (a registry some way
    off), so that requests the limits allow do overlap."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.now = self.peak = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(self.delay)
            return super().handle_request(request)
        finally:
            with self._lock:
                self.now -= 1


@pytest.mark.slow
@pytest.mark.parametrize("per_host", [3, None], ids=["per_host=3", "default"])
def test_requests_in_flight_to_one_host_stay_within_the_per_host_limit(
    registry_anon: RunningRegistry, per_host: int | None
) -> None:
    repo = unique("in-flight")
    first = push_image(registry_anon, repo, "main-0000000-1111111", created="2024-01-01T00:00:00Z")
    for i in range(1, DEFAULT_PER_HOST + 4):
        tag_existing(registry_anon, repo, f"main-{i:07x}-1111111", first.digest)
    transport = InFlight(delay=0.05)
    http = httpx.Client(transport=transport)
    client = RegistryClient(http=http) if per_host is None else RegistryClient(http=http, per_host=per_host)

    with client:
        resolved = resolve_repository(client, repository(registry_anon, repo))

    assert len(resolved[0].candidates) == DEFAULT_PER_HOST + 4
    assert transport.peak == (per_host or DEFAULT_PER_HOST)
