"""The predecessor's database is adopted in place: its rows carried into cccatalog's tables once, in one
transaction, its own tables left exactly as they were, whatever processes open it at the same time.
Tests taking `predecessor` run on its SQLite file and on its PostgreSQL database (its HA mode)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sqlite3
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from cccatalog.catalog import migrations
from cccatalog.catalog.store import Store
from cccatalog.cli import run
from cccatalog.errors import StateError
from tests.pgfixtures import connect
from tests.predecessorfixtures import (
    GIT_COLUMNS,
    HEAD_CLI,
    LEAKED,
    SCHEMA_BEFORE_GIT,
    PgPredecessorDb,
    PredecessorDb,
    make_predecessor_db,
    make_predecessor_pg,
)

PROCESSES = 8
AnyPredecessor = PredecessorDb | PgPredecessorDb
CLI = "rw-cli-codecollection"
PUBLIC = "rw-public-codecollection"
FORK = "ss-rw-cli-codecollection"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def predecessor(request: pytest.FixtureRequest, tmp_path: Path) -> AnyPredecessor:
    if request.param == "sqlite":
        return make_predecessor_db(tmp_path / "data" / "catalog.db")
    return make_predecessor_pg(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_predecessor(tmp_path: Path) -> PredecessorDb:
    return make_predecessor_db(tmp_path / "data" / "catalog.db")


def _count(target: Path | str, table: str) -> int:
    sql = f"SELECT count(*) FROM {table}"  # noqa: S608
    if isinstance(target, Path):
        with contextlib.closing(sqlite3.connect(target)) as conn:
            return int(conn.execute(sql).fetchone()[0])
    with connect(target) as pg:
        row = pg.execute(sql).fetchone()
        assert row is not None
        return int(str(row[0]))


def test_collections_and_every_image_ref_are_carried_with_flags_and_times(
    predecessor: AnyPredecessor,
) -> None:
    with Store.open(predecessor.target) as store:
        assert store.schema_version == len(migrations.MIGRATIONS)
        collections = {c.slug: c for c in store.list_collections()}
        refs = {r.ref: r for r in store.list_image_refs(CLI, include_inactive=True)}
        public_refs = store.list_image_refs(PUBLIC)

    assert list(collections) == [CLI, PUBLIC, FORK]
    cli = collections[CLI]
    assert (cli.name, cli.source, cli.default_ref, cli.visibility) == (
        "RunWhen CLI CodeCollection",
        "ghcr-runwhen-contrib",
        "main",
        "public",
    )
    assert cli.git_url == "https://github.com/runwhen-contrib/rw-cli-codecollection"
    assert cli.updated_at == utc("2026-05-21 16:10:01.123456")
    assert (collections[FORK].default_ref, collections[FORK].visibility) == ("develop", "hidden")

    assert set(refs) == {"main", "v1.2.0", "v1.2.0-rc1", "feature/login", "pr-42"}
    main = refs["main"]
    assert (main.image_tag, main.image_digest, main.commit_hash, main.rt_revision) == (
        "main-10792f4-6e4bc81",
        "sha256:" + "a" * 64,
        "10792f4",
        "6e4bc81",
    )
    assert main.image_registry == "ghcr.io/runwhen-contrib/rw-cli-codecollection"
    assert main.image_built_at == utc("2026-05-21 15:55:00")
    assert main.synced_at == utc("2026-05-21 16:10:01.123456")
    assert main.built_at_source == "cc-catalog-svc"
    flags = {r.ref: (r.is_latest, r.is_stable, r.is_prerelease, r.is_active) for r in refs.values()}
    assert flags == {
        "main": (True, False, True, True),
        "v1.2.0": (False, True, False, True),
        "v1.2.0-rc1": (False, False, False, True),
        "feature/login": (False, False, True, True),
        "pr-42": (False, False, True, False),
    }
    assert refs["v1.2.0-rc1"].image_built_at is None
    assert refs["v1.2.0-rc1"].built_at_source is None
    assert refs["v1.2.0"].ref_type == "tag"
    assert [(r.ref, r.is_latest, r.is_stable) for r in public_refs] == [("main", True, True)]


def test_git_status_and_poll_status_are_carried(predecessor: AnyPredecessor) -> None:
    with Store.open(predecessor.target) as store:
        cli, public, fork = (store.get_mirror(s) for s in (CLI, PUBLIC, FORK))
        polls = {s: store.get_image_sync(s) for s in (CLI, PUBLIC, FORK)}

    assert cli is not None
    assert (cli.head_commit, cli.last_success_at, cli.last_error) == (
        HEAD_CLI,
        utc("2026-05-21 16:00:02.5"),
        None,
    )
    assert cli.upstream_url == "https://github.com/runwhen-contrib/rw-cli-codecollection"
    assert public is not None
    assert (public.head_commit, public.last_success_at) == (None, None)
    assert public.last_error is not None
    assert public.last_error.startswith("git -c http.extraHeader=")
    assert fork is None  # the predecessor never synced it: nothing to carry
    cli_poll, public_poll = polls[CLI], polls[PUBLIC]
    assert cli_poll is not None
    assert (cli_poll.succeeded_at, cli_poll.error) == (utc("2026-05-21 16:10:01.123456"), None)
    assert public_poll is not None
    assert public_poll.error == "registry answered 503 Service Unavailable"
    assert polls[FORK] is None


def test_a_credential_the_predecessor_stored_in_an_error_is_not_carried(
    predecessor: AnyPredecessor,
) -> None:
    """Its failed git syncs stored the command line with the Authorization header (its bug 8)."""
    with Store.open(predecessor.target) as store:
        mirror = store.get_mirror(PUBLIC)
    assert mirror is not None
    assert mirror.last_error is not None
    assert LEAKED.split()[1] not in mirror.last_error
    assert "***" in mirror.last_error


def test_the_predecessors_tables_are_left_exactly_as_they_were(
    predecessor: AnyPredecessor,
) -> None:
    schema, rows = predecessor.schema(), predecessor.dump()
    assert all(rows[table] for table in ("codecollections", "image_refs", "mirror_jobs"))

    Store.open(predecessor.target).close()

    assert predecessor.schema() == schema
    assert predecessor.dump() == rows


def test_the_predecessor_can_run_on_the_file_again_and_a_second_open_carries_nothing(
    sqlite_predecessor: PredecessorDb,
) -> None:
    """A rollback: the predecessor writes to its tables as before; cccatalog, started again, keeps
    what it carried the first time and does not adopt again."""
    Store.open(sqlite_predecessor.path).close()
    with sqlite_predecessor.connect() as conn:  # what the predecessor's poll does, with its engine's pragmas
        conn.execute(
            "INSERT INTO codecollections (slug, name, default_ref, visibility) "
            "VALUES ('new-cc', 'n', 'main', 'public')"
        )
        conn.execute(
            "INSERT INTO image_refs (cc_id, ref_name, ref_type, image_tag, is_latest, is_stable, "
            "is_prerelease, is_active) SELECT id, 'main', 'branch', 'main-2222222-6e4bc81', 1, 0, 1, 1 "
            "FROM codecollections WHERE slug = 'new-cc'"
        )
        conn.execute("UPDATE image_refs SET is_active = 0 WHERE ref_name = 'feature/login'")
        conn.execute("DELETE FROM codecollections WHERE slug = ?", (FORK,))  # cascades, as its FK says
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    with Store.open(sqlite_predecessor.path) as store:
        assert [c.slug for c in store.list_collections()] == [CLI, PUBLIC, FORK]
        assert store.list_image_refs("new-cc", include_inactive=True) == []
        login = next(r for r in store.list_image_refs(CLI) if r.ref == "feature/login")
        assert login.is_active


def _open_in_child(target: Path | str, barrier: Barrier, results: Queue[tuple[str, object]]) -> None:
    try:
        barrier.wait(timeout=20)
        with Store.open(target, busy_timeout_s=30) as opened:
            results.put(("ok", len(opened.list_image_refs(CLI, include_inactive=True))))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_processes_opening_the_predecessors_database_together_adopt_it_once(
    predecessor: AnyPredecessor,
) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    results: Queue[tuple[str, object]] = ctx.Queue()
    procs = [
        ctx.Process(target=_open_in_child, args=(predecessor.target, barrier, results))
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)

    assert outcomes == [("ok", 5)] * PROCESSES
    counts = [
        _count(predecessor.target, t)
        for t in (
            "cccatalog_collections",
            "cccatalog_image_refs",
            "cccatalog_git_mirrors",
            "cccatalog_image_syncs",
        )
    ]
    assert counts == [3, 6, 2, 2]


UPGRADED_SCHEMA = (
    *SCHEMA_BEFORE_GIT,
    "ALTER TABLE codecollections ADD COLUMN git_head_commit VARCHAR(80)",
    "ALTER TABLE codecollections ADD COLUMN git_last_synced TIMESTAMP",
    "ALTER TABLE codecollections ADD COLUMN git_last_sync_error TEXT",
)


def test_a_database_from_before_its_git_columns_is_adopted(tmp_path: Path) -> None:
    db = make_predecessor_db(tmp_path / "catalog.db", schema=SCHEMA_BEFORE_GIT)
    assert GIT_COLUMNS.split()[0] not in str(db.schema())
    with Store.open(db.path) as store:
        assert len(store.list_image_refs(CLI, include_inactive=True)) == 5
        assert store.list_mirrors() == []
        poll = store.get_image_sync(PUBLIC)
    assert poll is not None
    assert poll.error == "registry answered 503 Service Unavailable"


def test_a_database_whose_git_columns_were_added_by_its_upgrade_is_adopted(tmp_path: Path) -> None:
    db = PredecessorDb(tmp_path / "catalog.db")
    with db.connect() as conn:
        for statement in UPGRADED_SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO codecollections (slug, default_ref, visibility, git_head_commit, git_last_synced) "
            "VALUES ('a', 'main', 'public', ?, '2026-05-21 16:00:00.000000')",
            (HEAD_CLI,),
        )
    with Store.open(db.path) as store:
        mirror = store.get_mirror("a")
        [collection] = store.list_collections()
    assert mirror is not None
    assert (mirror.head_commit, mirror.last_success_at) == (HEAD_CLI, utc("2026-05-21 16:00:00"))
    assert (collection.name, collection.source) == (None, "")


def test_a_predecessor_file_a_newer_cccatalog_wrote_to_is_refused_untouched(
    sqlite_predecessor: PredecessorDb,
) -> None:
    with sqlite_predecessor.connect() as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA user_version = 999")
    before = sqlite_predecessor.path.read_bytes()
    with pytest.raises(StateError, match="newer cccatalog"):
        Store.open(sqlite_predecessor.target)
    assert sqlite_predecessor.path.read_bytes() == before


def test_a_failed_adoption_leaves_the_file_as_it_was(sqlite_predecessor: PredecessorDb) -> None:
    """One transaction: when part of it fails (here a half-made file already holds one of
    cccatalog's tables), nothing of it stays and the version is still 0."""
    with sqlite_predecessor.connect() as conn:
        conn.execute("CREATE TABLE cccatalog_image_syncs (slug TEXT PRIMARY KEY)")
    schema, rows = sqlite_predecessor.schema(), sqlite_predecessor.dump()
    with pytest.raises(StateError):
        Store.open(sqlite_predecessor.target)
    assert sqlite_predecessor.schema() == schema
    assert sqlite_predecessor.dump() == rows
    with sqlite3.connect(sqlite_predecessor.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names & {"cccatalog_collections", "cccatalog_image_refs", "cccatalog_git_mirrors"} == set()


# --- end to end: the predecessor's image, environment and config -----------------------------------


def _predecessor_config(tmp_path: Path) -> Path:
    refs = {
        "default_ref": "main",
        "stable_ref": "v1.3.0",
        "refs": [
            {
                "ref": "main",
                "ref_type": "branch",
                "commit": "abcdef1",
                "rt_revision": "6e4bc81",
                "image_tag": "main-abcdef1-6e4bc81",
                "image_digest": None,
                "built_at": "2026-06-01T00:00:00Z",
            },
            {
                "ref": "v1.3.0",
                "ref_type": "tag",
                "commit": "abcdef2",
                "rt_revision": "6e4bc81",
                "image_tag": "v1.3.0-abcdef2-6e4bc81",
                "image_digest": None,
                "built_at": None,
            },
        ],
    }
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    path = tmp_path / "config.yaml"
    path.write_text(
        "scheduler: {catalog_poll_minutes: 5, git_sync_minutes: 60}\n"
        "git: {enabled: true, data_dir: git, runtime_sync: false}\n"
        "sources:\n"
        "  - name: ghcr-runwhen-contrib\n"
        "    type: static\n"
        "    codecollections:\n"
        f"      - {{slug: {CLI}, git_url: 'https://github.com/runwhen-contrib/rw-cli-codecollection',"
        f" image_registry: {json.dumps('ghcr.io/runwhen-contrib/rw-cli-codecollection')},"
        " static_path: refs.json}\n"
        f"      - {{slug: {PUBLIC}, git_url: 'https://github.com/runwhen-contrib/rw-public-codecollection'}}\n"
        "destinations: []\n"
    )
    return path


def _get(path: Path, target: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, object]:
    code = run(["-q", "serve", "-c", str(path), "--get", target])
    status, _, body = capsys.readouterr().out.partition("\n")
    assert code == (0 if int(status) < 400 else 1)
    return int(status), json.loads(body)


def test_the_predecessors_db_url_serves_its_catalog_then_sync_updates_it(
    tmp_path: Path,
    sqlite_predecessor: PredecessorDb,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CC_CATALOG_DB_URL", f"sqlite:///{sqlite_predecessor.path}")
    monkeypatch.chdir(tmp_path)
    config = _predecessor_config(tmp_path)
    schema, rows = sqlite_predecessor.schema(), sqlite_predecessor.dump()

    status, detail = _get(config, f"/api/v1/catalog/codecollections/{CLI}", capsys)
    assert status == 200
    assert isinstance(detail, dict)
    assert (detail["latest_image_tag"], detail["stable_image_tag"]) == (
        "main-10792f4-6e4bc81",
        "v1.2.0-9988aab-6e4bc81",
    )
    assert detail["last_synced"] == "2026-05-21T16:10:01Z"
    status, repo = _get(config, f"/api/v1/git/repos/{CLI}", capsys)
    assert isinstance(repo, dict)
    assert (repo["head_commit"], repo["last_synced"], repo["present"]) == (
        HEAD_CLI,
        "2026-05-21T16:00:02Z",
        False,
    )
    status, ref = _get(config, f"/api/v1/catalog/codecollections/{CLI}/refs/pr-42", capsys)
    assert isinstance(ref, dict)
    assert (ref["is_active"], ref["image_built_at"]) == (False, "2026-04-01T00:00:00Z")

    assert run(["-q", "sync", "-c", str(config), "--no-git"]) == 0
    status, detail = _get(config, f"/api/v1/catalog/codecollections/{CLI}", capsys)
    assert isinstance(detail, dict)
    assert (detail["latest_image_tag"], detail["stable_image_tag"]) == (
        "main-abcdef1-6e4bc81",
        "v1.3.0-abcdef2-6e4bc81",
    )
    assert sqlite_predecessor.schema() == schema
    assert sqlite_predecessor.dump() == rows
    assert not (tmp_path / "git" / ".cccatalog").exists()  # the state is the predecessor's file
    assert os.path.getsize(sqlite_predecessor.path) > 0
