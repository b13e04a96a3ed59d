"""`GET /metrics` as Prometheus reads it: parsed with prometheus_client's own text parser, against a real
`serve` on loopback with real mirrors and real git clients. The values move as a clone happens, a push
is refused, a request is turned away with 503 and a sync fails; labels never carry a path or an address.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cccatalog import __version__
from cccatalog.catalog.store import Store
from cccatalog.cli import run
from cccatalog.config import load_config
from cccatalog.server.cgi import HttpBackend
from cccatalog.server.metrics import ROUTE_CLASSES
from tests.apifixtures import Collection, build, write_catalog_config
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream
from tests.robustfixtures import Reply, git_wrapper, raw_request
from tests.servefixtures import running_server, synced_config
from tests.waiting import wait_until

MakeUpstream = Callable[[str], Upstream]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str) -> Samples:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    response = httpx.get(f"{base_url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests(samples: Samples, route: str, status: str) -> float:
    return value(samples, "cccatalog_http_requests_total", route=route, status=status)


def git_clone(url: str, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "clone", "-q", url, str(dest)], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_clone_moves_request_byte_and_duration_series(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    with running_server(config) as server:
        before = scrape(server.url)
        assert git_clone(f"{server.url}/git/alpha.git", tmp_path / "clone").returncode == 0
        after = scrape(server.url)

    assert requests(after, "git-info-refs", "200") == requests(before, "git-info-refs", "200") + 1
    assert requests(after, "git-upload-pack", "200") > requests(before, "git-upload-pack", "200")
    sent = "cccatalog_http_response_bytes_total"
    assert value(after, sent, route="git-upload-pack") > value(before, sent, route="git-upload-pack") + 100
    count = "cccatalog_http_request_duration_seconds_count"
    assert value(after, count, route="git-upload-pack") == requests(after, "git-upload-pack", "200")
    # the first scrape is counted by the second
    assert requests(after, "metrics", "200") == 1
    assert value(after, "cccatalog_build_info", version=__version__) == 1
    assert value(after, "cccatalog_upload_packs_max") == config.serve.max_concurrent_upload_packs


def test_a_refused_push_is_counted_as_a_403(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = synced_config(write_config({"alpha": up.url}))
    with running_server(config) as server:
        before = scrape(server.url)
        push = subprocess.run(
            ["git", "-C", str(up.path), "push", f"{server.url}/git/alpha.git", "main"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        after = scrape(server.url)

    assert push.returncode != 0
    assert requests(after, "git-info-refs", "403") == requests(before, "git-info-refs", "403") + 1


def test_a_request_beyond_the_cap_is_counted_as_refused_while_one_is_in_flight(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    started, release = tmp_path / "started", tmp_path / "release"
    held = git_wrapper(
        tmp_path,
        "git-held",
        f'if [ "$1" = http-backend ]; then touch "{started}"; '
        f'while [ ! -e "{release}" ]; do sleep 0.05; done; fi',
    )
    first: list[Reply] = []
    path = "/git/alpha.git/info/refs?service=git-upload-pack"
    backend = HttpBackend(git=str(held))
    # no queue: the request beyond the one slot is refused at once (tests/test_serve_queue.py: the queue)
    with running_server(
        config, backend=backend, max_concurrent_upload_packs=1, max_queued_upload_packs=0
    ) as server:
        holder = threading.Thread(target=lambda: first.append(raw_request(server.url, "GET", path)))
        holder.start()
        try:
            assert wait_until(started.exists, 30), "the first request never reached the backend"
            during = scrape(server.url)
            refused = raw_request(server.url, "GET", path)
            after_refusal = scrape(server.url)
        finally:
            release.touch()
            holder.join(15)
        page = httpx.get(f"{server.url}/").text

    assert value(during, "cccatalog_upload_packs_in_flight") == 1
    assert refused.status == 503
    assert value(after_refusal, "cccatalog_http_refused_total", route="git-info-refs") == 1
    assert requests(after_refusal, "git-info-refs", "503") == 1
    assert [r.status for r in first] == [200]
    # the status page says it too
    assert 'Refused (503), last hour</div><div class="value">1<' in page


def test_a_failing_sync_is_seen_at_the_next_scrape(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    path = write_config({"alpha": up.url})
    config = synced_config(path)
    with running_server(config) as server:
        before = scrape(server.url)
        up.path.rename(tmp_path / "gone")  # the upstream disappears; the mirror stays
        assert run(["-q", "sync", "-c", str(path)]) == 1
        after = scrape(server.url)

    assert value(before, "cccatalog_mirror_last_sync_failed", slug="alpha") == 0
    assert value(after, "cccatalog_mirror_last_sync_failed", slug="alpha") == 1
    assert value(after, "cccatalog_mirror_servable", slug="alpha") == 1, "the last good mirror is kept"
    age = value(after, "cccatalog_mirror_seconds_since_last_success", slug="alpha")
    assert 0 <= age < config.serve.freshness_budget_minutes * 60
    assert value(after, "cccatalog_freshness_budget_seconds") == config.serve.freshness_budget_minutes * 60
    assert value(after, "cccatalog_mirror_last_success_timestamp_seconds", slug="alpha") > 1.7e9


def test_image_poll_failures_refs_and_the_built_time_of_latest_are_exposed_per_collection(
    write_config: MakeConfig, tmp_path: Path
) -> None:
    path = write_catalog_config(
        tmp_path / "catalog.yaml",
        [
            Collection(
                "alpha",
                builds=[
                    build("main", "aaaaaaa", built_at="2026-01-02T03:04:05Z"),
                    build("v1.0.0", "bbbbbbb"),
                ],
            ),
            Collection("beta", builds=[build("main", "ccccccc")]),
        ],
        git={"enabled": False},
    )
    assert run(["-q", "sync", "-c", str(path)]) == 0
    config = load_config(path)
    with Store.open(config.state.path) as store:
        store.record_image_failure("beta", error="registry answered 500", attempted_at=datetime.now(UTC))
    with running_server(config) as server:
        samples = scrape(server.url)

    assert value(samples, "cccatalog_collection_active_refs", slug="alpha") == 2
    assert value(samples, "cccatalog_collection_latest_built_timestamp_seconds", slug="alpha") == 1767323045
    assert value(samples, "cccatalog_image_poll_failed", slug="alpha") == 0
    assert value(samples, "cccatalog_image_poll_failed", slug="beta") == 1


def test_labels_never_carry_a_path_or_a_client_address(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    odd = [
        "/etc/passwd",
        "/git/alpha.git/objects/info/packs",
        "/git/alpha.git/config",
        "/api/v1/catalog/codecollections/secret-looking-slug",
        "/%2e%2e/x?token=abcdef",
        "/" + "a" * 300,
    ]
    with running_server(config) as server:
        for target in odd:
            raw_request(server.url, "GET", target)
        response = httpx.get(f"{server.url}/metrics")

    text = response.text
    assert "127.0.0.1" not in text
    assert "passwd" not in text
    assert "secret-looking-slug" not in text
    assert "a" * 40 not in text
    routes = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "route" in sample.labels:
                routes.add(sample.labels["route"])
            assert set(sample.labels) <= {"route", "status", "slug", "version", "le"}, sample
    assert routes <= set(ROUTE_CLASSES)
    assert {"other", "git-head", "api-catalog"} & routes


def test_each_server_counts_its_own_requests(make_upstream: MakeUpstream, write_config: MakeConfig) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    with running_server(config) as one, running_server(config) as two:
        for _ in range(3):
            httpx.get(f"{one.url}/healthz")
        assert requests(scrape(one.url), "health", "200") == 3
        assert requests(scrape(two.url), "health", "200") == 0


def test_metrics_answers_head_and_refuses_other_methods(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    config = synced_config(write_config({"alpha": make_upstream("alpha").url}))
    with running_server(config) as server:
        head = raw_request(server.url, "HEAD", "/metrics")
        post = raw_request(server.url, "POST", "/metrics", body=b"")

    assert head.status == 200
    assert head.body == b""
    assert int(head.headers["content-length"]) > 0
    assert post.status == 405
    assert post.headers["allow"] == "GET, HEAD"
