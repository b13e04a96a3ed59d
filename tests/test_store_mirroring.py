"""The mirroring state on both engines: jobs are enqueued once, claimed once, retried up to their
attempts, and a success records the build the destination holds; the predecessor's rows are adopted."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cccatalog.catalog.models import NewMirrorJob
from cccatalog.catalog.store import Store
from tests.predecessorfixtures import REGISTRY, make_predecessor_db, make_predecessor_pg

TARGET = "acme.jfrog.io/cc/rw-cli:main-1234567-abcdef0"


def job(tag: str = "main-1234567-abcdef0", destination: str = "acme") -> NewMirrorJob:
    return NewMirrorJob(
        destination, "rw-cli", f"ghcr.io/org/rw-cli:{tag}", tag, f"acme.jfrog.io/cc/rw-cli:{tag}"
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    location = request.getfixturevalue("pg_url") if request.param == "postgresql" else tmp_path / "s.db"
    with Store.open(location) as opened:
        opened.save_destinations([("acme", "jfrog", "{}")])
        yield opened


def long_ago() -> datetime:
    return datetime.now(UTC) - timedelta(hours=1)


def test_a_job_is_enqueued_once_and_a_held_build_is_counted_as_already_mirrored(store: Store) -> None:
    assert store.enqueue_mirror_jobs([job(), job("v1.0-1234567-abcdef0")]) == (2, 0)
    assert store.enqueue_mirror_jobs([job()]) == (0, 0)  # pending already: not twice
    [first, second] = store.claim_mirror_jobs(limit=10, stale_before=long_ago())
    assert (first.id, second.id) == (1, 2)
    assert (first.status, first.attempts, first.started_at is not None) == ("running", 1, True)
    assert (
        store.finish_mirror_job(first, error=None, log_text="copied", target_digest="sha256:" + "a" * 64)
        == "done"
    )
    assert store.enqueue_mirror_jobs([job()]) == (0, 1)

    [target] = store.mirror_targets(slug="rw-cli")
    assert (target.destination, target.source_image_tag, target.target_image_ref) == (
        "acme",
        "main-1234567-abcdef0",
        TARGET,
    )
    assert target.target_digest == "sha256:" + "a" * 64
    destination = store.list_destinations()["acme"]
    assert (destination.mirrored_tag_count, destination.last_sync_error) == (1, None)
    assert destination.last_synced is not None


def test_a_failed_job_is_retried_until_its_attempts_are_used_up(store: Store) -> None:
    store.enqueue_mirror_jobs([job()], max_attempts=2)
    [claimed] = store.claim_mirror_jobs(limit=5, stale_before=long_ago())
    assert store.finish_mirror_job(claimed, error="HTTP 500", log_text="") == "pending"
    [again] = store.claim_mirror_jobs(limit=5, stale_before=long_ago())
    assert again.attempts == 2
    assert store.finish_mirror_job(again, error="HTTP 500 again", log_text="tail") == "failed"
    assert store.claim_mirror_jobs(limit=5, stale_before=long_ago()) == []

    total, [shown] = store.list_mirror_jobs(status="failed")
    assert (total, shown.last_error, shown.attempts, shown.max_attempts) == (1, "HTTP 500 again", 2, 2)
    detail = store.get_mirror_job(shown.id)
    assert detail is not None
    assert detail.log_text == "tail"
    assert store.get_mirror_job(999) is None
    assert store.list_destinations()["acme"].last_sync_error == "HTTP 500 again"
    assert store.enqueue_mirror_jobs([job()]) == (1, 0)  # a failed job does not block a new one


def test_a_job_left_running_by_a_stopped_process_is_taken_over(store: Store) -> None:
    store.enqueue_mirror_jobs([job()])
    [claimed] = store.claim_mirror_jobs(limit=5, stale_before=long_ago())
    assert store.claim_mirror_jobs(limit=5, stale_before=long_ago()) == []  # running, and recent
    [taken] = store.claim_mirror_jobs(limit=5, stale_before=datetime.now(UTC) + timedelta(seconds=1))
    assert (taken.id, taken.attempts) == (claimed.id, 2)


def test_concurrent_claims_hand_each_job_to_one_claimer(store: Store) -> None:
    store.enqueue_mirror_jobs([job(f"main-{i:07d}-abcdef0") for i in range(20)])
    with ThreadPoolExecutor(4) as pool:
        batches = list(
            pool.map(lambda _: store.claim_mirror_jobs(limit=20, stale_before=long_ago()), range(4))
        )
    ids = [j.id for batch in batches for j in batch]
    assert sorted(ids) == list(range(1, 21))


def test_jobs_are_listed_newest_first_and_filtered(store: Store) -> None:
    store.save_destinations([("site", "registry", "{}")])
    store.enqueue_mirror_jobs([job(), job(destination="site"), job("v2.0-1234567-abcdef0")])
    total, page = store.list_mirror_jobs(limit=2)
    assert (total, [j.id for j in page]) == (3, [3, 2])
    total, page = store.list_mirror_jobs(limit=2, offset=2)
    assert (total, [j.id for j in page]) == (3, [1])
    assert store.list_mirror_jobs(destination="site")[0] == 1
    assert store.list_mirror_jobs(cc_slug="other")[0] == 0
    assert store.list_mirror_jobs(status="pending", destination="acme")[0] == 2


def test_the_predecessors_mirroring_rows_are_adopted_from_sqlite(tmp_path: Path) -> None:
    predecessor = make_predecessor_db(tmp_path / "catalog.db")
    with Store.open(predecessor.path) as adopted:
        assert_adopted(adopted)


def test_the_predecessors_mirroring_rows_are_adopted_from_postgresql(pg_url: str) -> None:
    make_predecessor_pg(pg_url)
    with Store.open(pg_url) as adopted:
        assert_adopted(adopted)


def assert_adopted(adopted: Store) -> None:
    assert set(adopted.list_destinations()) == {"acme-jfrog"}
    total, [carried] = adopted.list_mirror_jobs()
    assert (total, carried.id, carried.cc_slug, carried.destination, carried.status) == (
        1,
        1,
        "rw-cli-codecollection",
        "acme-jfrog",
        "done",
    )
    assert carried.source_image_ref == f"{REGISTRY}:main-10792f4-6e4bc81"
    assert carried.source_image_tag == "main-10792f4-6e4bc81"
    # ids go on from the predecessor's
    adopted.enqueue_mirror_jobs([NewMirrorJob("acme-jfrog", "rw-cli-codecollection", "x:v1", "v1", "y:v1")])
    assert adopted.list_mirror_jobs(limit=1)[1][0].id == 2


def test_a_database_adopted_before_mirroring_was_kept_gets_the_predecessors_rows_on_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cccatalog.catalog import migrations

    predecessor = make_predecessor_db(tmp_path / "catalog.db")
    full = list(migrations.MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", full[:7])  # the cccatalog that adopted it first
    Store.open(predecessor.path).close()
    monkeypatch.setattr(migrations, "MIGRATIONS", full)
    with Store.open(predecessor.path) as upgraded:
        assert_adopted(upgraded)


def test_a_claim_narrowed_to_collections_leaves_the_others_pending(store: Store) -> None:
    other = NewMirrorJob("acme", "other", "ghcr.io/org/other:v1", "v1", "acme.jfrog.io/cc/other:v1")
    store.enqueue_mirror_jobs([job(), other])
    [claimed] = store.claim_mirror_jobs(limit=5, stale_before=long_ago(), slugs=["other"])
    assert claimed.cc_slug == "other"
    assert store.list_mirror_jobs(status="pending")[1][0].cc_slug == "rw-cli"
