"""The state store against real SQLite files and a real PostgreSQL server: migrations under concurrency,
mirror status, collections. Tests taking `target` or `store` run once per engine."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from cccatalog.catalog import migrations
from cccatalog.catalog.backends import Conn
from cccatalog.catalog.models import CatalogPointers, ImageRefRecord, JobRecord, MirrorStatus
from cccatalog.catalog.pointers import pointers
from cccatalog.catalog.sqlite_engine import MEMORY
from cccatalog.catalog.store import Store
from cccatalog.config import CodeCollection
from cccatalog.errors import StateError
from tests.pgfixtures import connect

PROCESSES = 12
SCHEMA_TABLES = [
    "cccatalog_catalog_pointers",
    "cccatalog_collections",
    "cccatalog_git_mirrors",
    "cccatalog_image_refs",
    "cccatalog_image_syncs",
    "cccatalog_jobs",
    "cccatalog_destinations",
    "cccatalog_mirror_targets",
    "cccatalog_mirror_jobs",
    "cccatalog_mirror_job_ids",
]
T0 = datetime(2026, 11, 25, 21, 0, 0, 123456, tzinfo=UTC)


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _tables(path: Path) -> list[str]:
    conn = _raw(path)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
    finally:
        conn.close()
    return [name for (name,) in rows]


def _pragma(path: Path, name: str) -> object:
    conn = _raw(path)
    try:
        value: object = conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()
    return value


def _count_runs(conn: Conn) -> None:
    """An extra migration that records every time it runs."""
    conn.execute("CREATE TABLE IF NOT EXISTS migration_runs (pid INTEGER NOT NULL)")
    time.sleep(0.05)  # widen the window in which a racing process could run it a second time
    conn.execute("INSERT INTO migration_runs (pid) VALUES (?)", (os.getpid(),))


@pytest.fixture
def counting_migration(monkeypatch: pytest.MonkeyPatch) -> int:
    """Register `_count_runs` as the newest migration; yields the schema version it brings."""
    patched = [*migrations.MIGRATIONS, _count_runs]
    monkeypatch.setattr(migrations, "MIGRATIONS", patched)
    return len(patched)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a state lives: an SQLite file, or the URL of an empty PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "state.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(target: Path | str) -> Iterator[Store]:
    with Store.open(target) as opened:
        yield opened


def _query(target: Path | str, sql: str) -> list[tuple[object, ...]]:
    """Rows of `sql` as the engine itself stores them, read without cccatalog."""
    if isinstance(target, Path):
        conn = _raw(target)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    with connect(target) as pg:
        return pg.execute(sql).fetchall()


def _open_in_child(path: str, barrier: Barrier, results: Queue[tuple[str, object]]) -> None:
    try:
        barrier.wait(timeout=20)
        with Store.open(Path(path), busy_timeout_s=20) as opened:
            results.put(("ok", opened.schema_version))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _open_from_many_processes(path: Path) -> list[tuple[str, object]]:
    # fork, so the children inherit the monkeypatched MIGRATIONS list.
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    results: Queue[tuple[str, object]] = ctx.Queue()
    procs = [ctx.Process(target=_open_in_child, args=(str(path), barrier, results)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    return outcomes


def _make_new(path: Path) -> None:
    pass


def _make_zero_byte_file(path: Path) -> None:
    path.touch()


def _make_empty_db_at_version_0(path: Path) -> None:
    conn = _raw(path)  # rollback journal, user_version 0, no tables
    conn.execute("CREATE TABLE scratch (x)")
    conn.execute("DROP TABLE scratch")
    conn.close()


def _make_current_schema_without_extra(path: Path) -> None:
    saved = migrations.MIGRATIONS
    migrations.MIGRATIONS = saved[:-1]
    try:
        Store.open(path).close()
    finally:
        migrations.MIGRATIONS = saved
    assert _pragma(path, "user_version") == len(saved) - 1


@pytest.mark.parametrize(
    "make_file",
    [_make_new, _make_zero_byte_file, _make_empty_db_at_version_0, _make_current_schema_without_extra],
    ids=["new-file", "zero-byte-file", "empty-db-version-0", "one-migration-behind"],
)
def test_processes_opening_one_file_together_all_succeed_and_each_migration_runs_once(
    tmp_path: Path, counting_migration: int, make_file: Callable[[Path], None]
) -> None:
    path = tmp_path / "state" / "state.db"
    path.parent.mkdir()
    make_file(path)

    outcomes = _open_from_many_processes(path)

    assert outcomes == [("ok", counting_migration)] * PROCESSES
    assert _pragma(path, "user_version") == counting_migration
    assert _pragma(path, "journal_mode") == "wal"
    assert _tables(path) == sorted([*SCHEMA_TABLES, "migration_runs"])
    conn = _raw(path)
    (runs,) = conn.execute("SELECT count(*) FROM migration_runs").fetchone()
    conn.close()
    assert runs == 1


def test_new_state_file_is_in_wal_mode_at_the_latest_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "state.db"
    with Store.open(path) as opened:
        assert opened.schema_version == len(migrations.MIGRATIONS)
    assert _pragma(path, "journal_mode") == "wal"
    assert _pragma(path, "user_version") == len(migrations.MIGRATIONS)
    assert _tables(path) == sorted(SCHEMA_TABLES)


def test_reopening_a_current_file_runs_no_migration(tmp_path: Path, counting_migration: int) -> None:
    path = tmp_path / "state.db"
    for _ in range(3):
        Store.open(path).close()
    conn = _raw(path)
    assert conn.execute("SELECT count(*) FROM migration_runs").fetchone() == (1,)
    conn.close()


def test_file_from_a_newer_cccatalog_is_refused_and_left_untouched(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    path = tmp_path / "state" / "state.db"
    conn = _raw(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = path.read_bytes()

    with pytest.raises(StateError) as err:
        Store.open(path)

    message = str(err.value)
    assert str(path) in message
    assert "newer cccatalog" in message
    assert "999" in message
    assert str(len(migrations.MIGRATIONS)) in message
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["state.db"]  # no -wal/-shm left behind


def test_failed_migration_rolls_back_and_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    Store.open(path).close()

    def broken(conn: Conn) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, broken])
    with pytest.raises(StateError, match="no such table"):
        Store.open(path)

    assert _pragma(path, "user_version") == len(migrations.MIGRATIONS) - 1
    assert "half_done" not in _tables(path)


def test_open_under_a_regular_file_raises_state_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    path = blocker / "state.db"

    with pytest.raises(StateError) as err:
        Store.open(path)

    assert str(path) in str(err.value)
    assert err.value.__cause__ is None
    assert err.value.__suppress_context__


def test_open_on_a_directory_raises_state_error_without_sqlite_types(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.mkdir()

    with pytest.raises(StateError) as err:
        Store.open(path)

    assert str(path) in str(err.value)
    assert "writable" in str(err.value)
    assert "sqlite3" not in str(err.value)
    assert err.value.__cause__ is None
    assert err.value.__suppress_context__


def test_file_that_is_not_a_database_raises_state_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite, just text that is long enough to look like a header" * 20)

    with pytest.raises(StateError, match="not a database"):
        Store.open(path)


def _succeed(store: Store, slug: str, head: str, at: datetime) -> None:
    store.record_mirror_success(
        slug,
        upstream_url=f"https://github.com/org/{slug}",
        action="fetch",
        head_commit=head,
        default_branch="main",
        refs_fingerprint=f"fp-{head}",
        attempted_at=at,
        finished_at=at + timedelta(seconds=5),
    )


def test_failure_after_success_keeps_the_last_good_head_and_records_the_error(store: Store) -> None:
    _succeed(store, "rw-cli", "a" * 40, T0)
    store.record_mirror_failure(
        "rw-cli",
        upstream_url="https://github.com/org/rw-cli",
        action="fetch",
        error="fatal: could not read from remote",
        attempted_at=T0 + timedelta(hours=1),
    )

    assert store.get_mirror("rw-cli") == MirrorStatus(
        slug="rw-cli",
        upstream_url="https://github.com/org/rw-cli",
        head_commit="a" * 40,
        default_branch="main",
        refs_fingerprint="fp-" + "a" * 40,
        last_action="fetch",
        last_attempt_at=T0 + timedelta(hours=1),
        last_success_at=T0 + timedelta(seconds=5),
        last_error="fatal: could not read from remote",
    )


def test_success_after_failure_clears_the_error(store: Store) -> None:
    store.record_mirror_failure(
        "rw-cli", upstream_url="https://x/rw-cli", action="clone", error="boom", attempted_at=T0
    )
    _succeed(store, "rw-cli", "b" * 40, T0 + timedelta(minutes=1))

    status = store.get_mirror("rw-cli")
    assert status is not None
    assert status.last_error is None
    assert status.head_commit == "b" * 40
    assert status.last_action == "fetch"


def test_failure_of_a_never_synced_mirror_has_no_head_or_success_time(store: Store) -> None:
    store.record_mirror_failure(
        "new-cc", upstream_url="https://x/new-cc", action="clone", error="boom", attempted_at=T0
    )

    assert store.get_mirror("new-cc") == MirrorStatus(
        slug="new-cc",
        upstream_url="https://x/new-cc",
        last_action="clone",
        last_attempt_at=T0,
        last_error="boom",
    )
    assert store.get_mirror("unknown") is None


def test_times_round_trip_as_aware_utc_with_microseconds(target: Path | str) -> None:
    plus_two = datetime(2026, 11, 25, 23, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    with Store.open(target) as opened:
        _succeed(opened, "cc", "c" * 40, plus_two)
    with Store.open(target) as reopened:
        status = reopened.get_mirror("cc")

    assert status is not None
    assert status.last_attempt_at == T0
    assert status.last_attempt_at is not None
    assert status.last_attempt_at.tzinfo == UTC
    assert _query(target, "SELECT last_attempt_at FROM cccatalog_git_mirrors") == [
        ("2026-11-25T21:00:00.123456Z",)
    ]


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        _succeed(store, "cc", "d" * 40, datetime(2026, 1, 1))
    assert store.get_mirror("cc") is None


def test_list_mirrors_is_ordered_by_slug(store: Store) -> None:
    for slug in ["zeta", "alpha", "mid"]:
        _succeed(store, slug, "e" * 40, T0)

    assert [m.slug for m in store.list_mirrors()] == ["alpha", "mid", "zeta"]


def test_upsert_collections_updates_rows_in_place(store: Store) -> None:
    store.upsert_collections(
        [
            CodeCollection(slug="b-cc", source="ghcr", name="B", git_url="https://github.com/org/b"),
            CodeCollection(slug="a-cc", source="ghcr", name="A"),
        ]
    )
    first = {c.slug: c for c in store.list_collections()}
    store.upsert_collections(
        [CodeCollection(slug="b-cc", source="static", name="B2", default_ref="dev", visibility="hidden")]
    )

    rows = store.list_collections()
    assert [c.slug for c in rows] == ["a-cc", "b-cc"]
    a_cc, b_cc = rows
    assert a_cc == first["a-cc"]
    assert (b_cc.source, b_cc.name, b_cc.git_url, b_cc.default_ref, b_cc.visibility) == (
        "static",
        "B2",
        None,
        "dev",
        "hidden",
    )
    assert b_cc.updated_at >= first["b-cc"].updated_at
    assert b_cc.updated_at.tzinfo == UTC


def test_upsert_collections_is_all_or_nothing_and_errors_carry_no_row_data(store: Store) -> None:
    good = CodeCollection(slug="good-cc", source="ghcr", name="secret-looking-name")
    bad = CodeCollection(slug="bad-cc", source=None, name="secret-looking-name")  # type: ignore[arg-type]

    with pytest.raises(StateError) as err:
        store.upsert_collections([good, bad])

    assert store.list_collections() == []
    assert store.location in str(err.value)
    assert "secret-looking-name" not in str(err.value)
    assert "good-cc" not in str(err.value)


def test_threads_sharing_one_store_can_write_at_the_same_time(store: Store) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                _succeed(store, f"cc-{n}", f"{i:040d}", T0)
                store.list_mirrors()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [m.head_commit for m in store.list_mirrors()] == [f"{19:040d}"] * 8


def test_using_a_closed_store_raises_state_error(target: Path | str) -> None:
    opened = Store.open(target)
    opened.close()

    with pytest.raises(StateError, match="closed"):
        opened.list_mirrors()


# --- catalog pointers, jobs, mirror volumes (both engines) ---------------------------------------------


def _image(slug: str, ref: str, tag: str, **flags: bool) -> ImageRefRecord:
    _, commit, rt_revision = tag.rsplit("-", 2)
    return ImageRefRecord(
        slug,
        ref,
        "tag" if ref.startswith("v") else "branch",
        f"ghcr.io/org/{slug}",
        tag,
        None,
        commit,
        rt_revision,
        T0,
        "config",
        is_latest=flags.get("latest", False),
        is_prerelease=flags.get("pre", False),
        is_stable=flags.get("stable", False),
    )


def _computed(store: Store, slug: str) -> tuple[str | None, str | None, bool]:
    refs = store.list_image_refs(slug)
    latest, stable = pointers(refs)
    return (
        latest.image_tag if latest else None,
        stable.image_tag if stable else None,
        any(r.image_tag for r in refs),
    )


def _kept(store: Store, slug: str) -> tuple[str | None, str | None, bool]:
    kept = store.catalog_pointers().get(slug, CatalogPointers(slug))
    assert store.catalog_pointer(slug) == kept
    return kept.latest_tag, kept.stable_tag, kept.has_image


def test_the_pointers_kept_with_the_rows_are_the_pointers_of_the_rows(store: Store) -> None:
    writes = [
        [
            _image("a", "main", "main-1111111-aaaaaaa", latest=True),
            _image("a", "v1.2.0", "v1.2.0-2222222-aaaaaaa", stable=True),
            _image("a", "v1.1.0", "v1.1.0-3333333-aaaaaaa"),
        ],
        [],  # a transient empty listing keeps everything
        [
            _image("a", "main", "main-4444444-aaaaaaa", latest=True),
            _image("a", "v1.1.0", "v1.1.0-3333333-aaaaaaa"),
        ],  # v1.2.0 gone: inactive, no stable flag
        [_image("a", "v1.3.0", "v1.3.0-5555555-aaaaaaa", stable=True)],  # no latest at all
    ]
    seen = []
    for rows in writes:
        store.replace_image_refs("a", rows, synced_at=T0, deactivate_missing=bool(rows))
        assert _kept(store, "a") == _computed(store, "a")
        seen.append(_kept(store, "a"))

    assert seen == [
        ("main-1111111-aaaaaaa", "v1.2.0-2222222-aaaaaaa", True),
        ("main-1111111-aaaaaaa", "v1.2.0-2222222-aaaaaaa", True),
        ("main-4444444-aaaaaaa", "v1.1.0-3333333-aaaaaaa", True),  # semver stable among the rest
        (None, "v1.3.0-5555555-aaaaaaa", True),
    ]
    assert store.catalog_pointers()["a"].last_synced == T0
    assert store.catalog_pointers()["a"].latest_registry is None
    assert "unknown" not in store.catalog_pointers()


def test_a_collection_polled_with_nothing_to_show_has_its_poll_time_and_no_image(store: Store) -> None:
    store.replace_image_refs("empty", [], synced_at=T0, deactivate_missing=False)
    store.record_image_failure("failed", error="registry said 503", attempted_at=T0)

    kept = store.catalog_pointers()
    assert kept["empty"] == CatalogPointers("empty", False, last_synced=T0)
    assert kept["failed"] == CatalogPointers("failed", False)


def test_rows_written_before_the_pointers_were_kept_get_theirs_when_the_state_is_migrated(
    target: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = next(i for i, m in enumerate(migrations.MIGRATIONS) if m.__name__ == "m006_catalog_pointers")
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:before])
    Store.open(target).close()
    rows = [
        ("main", "main-1111111-aaaaaaa", 1, 0),
        ("v2.0.0", "v2.0.0-2222222-aaaaaaa", 0, 0),
        ("v10.0.0", "v10.0.0-3333333-aaaaaaa", 0, 0),
    ]
    for ref, tag, latest, stable in rows:  # what the older cccatalog wrote: no stable flag anywhere
        _execute(
            target,
            "INSERT INTO cccatalog_image_refs (slug, ref, image_tag, is_latest, is_stable) "
            "VALUES ('a', ?, ?, ?, ?)",
            (ref, tag, latest, stable),
        )
    monkeypatch.undo()

    with Store.open(target) as store:
        assert _kept(store, "a") == ("main-1111111-aaaaaaa", "v10.0.0-3333333-aaaaaaa", True)
        assert _kept(store, "a") == _computed(store, "a")


def _execute(target: Path | str, sql: str, params: tuple[object, ...]) -> None:
    if isinstance(target, Path):
        conn = _raw(target)
        try:
            conn.execute(sql, params)
        finally:
            conn.close()
        return
    with connect(target) as pg:
        pg.execute(sql.replace("?", "%s"), params)


def test_jobs_are_kept_and_the_oldest_finished_ones_forgotten(store: Store) -> None:
    running = JobRecord("sync-git-1", "sync-git", "running", "replica-a", T0)
    store.record_job(running)
    assert store.get_job("sync-git-1") == running
    done = replace(running, state="succeeded", finished_at=T0 + timedelta(seconds=3), result={"n": [1, 2]})
    store.record_job(done)
    assert store.get_job("sync-git-1") == done
    for i in range(5):
        started = T0 + timedelta(minutes=i + 1)
        job = JobRecord(f"sync-catalog-{i}", "sync-catalog", "failed", None, started, started, None, "boom")
        store.record_job(job)

    store.prune_jobs(keep=3)

    kept = [j for j in ("sync-git-1", *(f"sync-catalog-{i}" for i in range(5))) if store.get_job(j)]
    assert kept == ["sync-catalog-2", "sync-catalog-3", "sync-catalog-4"]
    assert store.get_job("nope") is None


def test_a_mirror_status_belongs_to_its_volume(target: Path | str) -> None:
    with Store.open(target) as shared:  # an SQLite state, or what an older schema recorded
        _succeed(shared, "alpha", "a" * 40, T0)
        _succeed(shared, "beta", "b" * 40, T0)
    with Store.open(target, volume="disk-1") as one, Store.open(target, volume="disk-2") as two:
        _succeed(one, "alpha", "1" * 40, T0)
        one.record_mirror_failure("beta", upstream_url="u", action="fetch", error="e", attempted_at=T0)

        assert [(m.slug, m.head_commit, m.last_error) for m in one.list_mirrors()] == [
            ("alpha", "1" * 40, None),
            ("beta", None, "e"),
        ]
        assert [(m.slug, m.head_commit) for m in two.list_mirrors()] == [
            ("alpha", "a" * 40),
            ("beta", "b" * 40),
        ]
        one_alpha, two_alpha = one.get_mirror("alpha"), two.get_mirror("alpha")
        assert one_alpha is not None
        assert two_alpha is not None
        assert (one_alpha.head_commit, two_alpha.head_commit) == ("1" * 40, "a" * 40)
        assert two.backfill_mirror("gamma", upstream_url="u", head_commit="c" * 40, default_branch="main")
        assert one.get_mirror("gamma") is None


def test_a_state_in_memory_is_migrated_kept_by_its_store_alone_and_never_read_only() -> None:
    with Store.open(MEMORY) as first, Store.open(MEMORY) as second:
        assert first.in_memory
        assert first.path == Path(MEMORY)
        assert first.schema_version == len(migrations.MIGRATIONS)
        first.upsert_collections([CodeCollection(slug="a-cc", source="ghcr", name="A")])
        assert [c.slug for c in first.list_collections()] == ["a-cc"]
        assert second.list_collections() == []
    assert Store.open(MEMORY, read_only=True) is None
    assert not Path(MEMORY).exists()  # no file of that name made where the process runs
