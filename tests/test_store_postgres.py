"""The state store on a real PostgreSQL server, where it differs from an SQLite file: many replicas
migrating one database at once, a database that is not cccatalog's to change, credentials that must
not show, connections the server drops, and a server that goes away and comes back."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import psycopg
import pytest

from cccatalog.catalog import migrations
from cccatalog.catalog.backends import Conn
from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.store import Store, state_database_version
from cccatalog.cli import run
from cccatalog.config import CodeCollection, load_config
from cccatalog.errors import StateError, StateUnavailable
from cccatalog.runlocks import Locks
from tests.pgfixtures import PASSWORD, PgServer, connect, running_postgres
from tests.predecessorfixtures import make_predecessor_pg

pytestmark = pytest.mark.postgres

PROCESSES = 8
T0 = datetime(2026, 11, 25, 21, 0, 0, tzinfo=UTC)


def _count_runs(conn: Conn) -> None:
    """An extra migration that records every time it runs."""
    conn.execute("CREATE TABLE IF NOT EXISTS migration_runs (pid INTEGER NOT NULL)")
    time.sleep(0.05)  # widen the window in which a racing process could run it a second time
    conn.execute("INSERT INTO migration_runs (pid) VALUES (pg_backend_pid())")


def _open_in_child(url: str, barrier: Barrier, results: Queue[tuple[str, object]]) -> None:
    try:
        barrier.wait(timeout=20)
        with Store.open(url) as opened:
            results.put(("ok", opened.schema_version))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _open_together(url: str) -> list[tuple[str, object]]:
    ctx = multiprocessing.get_context("fork")  # the children inherit a monkeypatched MIGRATIONS
    barrier = ctx.Barrier(PROCESSES)
    results: Queue[tuple[str, object]] = ctx.Queue()
    procs = [ctx.Process(target=_open_in_child, args=(url, barrier, results)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    return outcomes


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with connect(url) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.slow
def test_eight_processes_migrate_one_empty_database_at_once_each_migration_once(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, _count_runs])
    expected = len(migrations.MIGRATIONS)

    assert _open_together(pg_url) == [("ok", expected)] * PROCESSES
    assert _rows(pg_url, "SELECT count(*) FROM migration_runs") == [(1,)]
    assert _rows(pg_url, "SELECT version FROM cccatalog_schema") == [(expected,)]


@pytest.mark.slow
def test_eight_processes_adopt_one_predecessor_database_at_once(pg_url: str) -> None:
    make_predecessor_pg(pg_url)

    assert _open_together(pg_url) == [("ok", len(migrations.MIGRATIONS))] * PROCESSES
    assert _rows(pg_url, "SELECT count(*) FROM cccatalog_image_refs") == [(6,)]
    assert _rows(pg_url, "SELECT count(*) FROM cccatalog_collections") == [(3,)]


def _schema(url: str) -> list[tuple[object, ...]]:
    """cccatalog's tables as PostgreSQL describes them: columns, types, defaults, keys, indexes."""
    return _rows(
        url,
        "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable, c.column_default, "
        "(SELECT string_agg(k.column_name, ',' ORDER BY k.ordinal_position) FROM "
        " information_schema.key_column_usage k JOIN information_schema.table_constraints t "
        " ON t.constraint_name = k.constraint_name AND t.table_name = k.table_name "
        " WHERE t.constraint_type = 'PRIMARY KEY' AND k.table_name = c.table_name) "
        "FROM information_schema.columns c WHERE c.table_schema = 'public' "
        "AND c.table_name LIKE 'cccatalog_%' ORDER BY c.table_name, c.column_name",
    ) + _rows(
        url,
        "SELECT regexp_replace(indexdef, 'INDEX \\S+ ON', 'INDEX ON') FROM pg_indexes "
        "WHERE tablename LIKE 'cccatalog_%' ORDER BY 1",
    )


def test_an_adopted_database_has_the_schema_the_migrations_build(pg_server: PgServer) -> None:
    fresh, adopted = pg_server.create_database(), pg_server.create_database()
    try:
        Store.open(fresh).close()
        make_predecessor_pg(adopted)
        Store.open(adopted).close()
        assert _schema(adopted) == _schema(fresh)
    finally:
        pg_server.drop_database(fresh)
        pg_server.drop_database(adopted)


def test_a_database_a_newer_cccatalog_wrote_is_refused_untouched(pg_url: str) -> None:
    Store.open(pg_url).close()
    with connect(pg_url) as conn:
        conn.execute("UPDATE cccatalog_schema SET version = 999")
    before = _schema(pg_url), _rows(pg_url, "SELECT * FROM cccatalog_schema")

    with pytest.raises(StateError, match="newer cccatalog") as err:
        Store.open(pg_url)
    with pytest.raises(StateError, match="newer cccatalog"):
        state_database_version(pg_url)

    assert "999" in str(err.value)
    assert PASSWORD not in str(err.value)
    assert (_schema(pg_url), _rows(pg_url, "SELECT * FROM cccatalog_schema")) == before


def test_another_programs_database_is_refused_untouched(pg_url: str) -> None:
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")

    with pytest.raises(
        StateError, match=r"not a cccatalog state database \(it holds other tables: invoices\)"
    ):
        Store.open(pg_url)

    tables = _rows(pg_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    assert tables == [("invoices",)]


def test_the_version_is_read_without_writing_anything(pg_url: str) -> None:
    assert state_database_version(pg_url) == 0
    assert _rows(pg_url, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [
        (0,)
    ]
    Store.open(pg_url).close()
    assert state_database_version(pg_url) == len(migrations.MIGRATIONS)


@pytest.mark.parametrize(
    ("password", "tail"),
    [
        ("Wr0ng-Passw0rd-123", ""),  # the server refuses it
        ("Wr0ng%zzPassw0rd", ""),  # libpq quotes a bad percent-escape, password and all
        ("Wr0ng-Passw0rd-123", "?sslmode=bogus"),  # libpq refuses an option value
    ],
)
def test_the_password_never_shows_in_an_error(
    pg_server: PgServer, pg_url: str, password: str, tail: str
) -> None:
    url = pg_url.replace(PASSWORD, password) + tail
    with pytest.raises(StateError) as err:
        Store.open(url)

    message = str(err.value)
    assert password not in message
    assert "Passw0rd" not in message
    assert f"127.0.0.1:{pg_server.port}" in message or "***" in message


def test_a_url_libpq_cannot_parse_is_shown_masked_whole(pg_url: str) -> None:
    url = pg_url.replace("@127.0.0.1", "@[::1")
    with pytest.raises(StateError) as err:
        Store.open(url)
    assert PASSWORD not in str(err.value)
    assert "***" in str(err.value)


def test_connections_the_server_dropped_are_replaced_without_an_error(pg_url: str) -> None:
    """What a restart or a failover does to a pool: every idle connection is gone."""
    with Store.open(pg_url) as store:
        store.upsert_collections([CodeCollection("alpha", "static")])
        assert [c.slug for c in store.list_collections()] == ["alpha"]
        with connect(pg_url) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert dropped is not None
        assert int(str(dropped[0])) >= 1

        assert [c.slug for c in store.list_collections()] == ["alpha"]
        store.upsert_collections([CodeCollection("beta", "static")])
        assert [c.slug for c in store.list_collections()] == ["alpha", "beta"]
        assert store.unreachable() is None


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of this test's own, which it may stop and start."""
    with running_postgres() as server:
        yield server


def _wait(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_while_the_server_is_down_reads_answer_from_the_last_good_read(own_server: PgServer) -> None:
    url = own_server.create_database()
    with Store.open(url) as store:
        store.upsert_collections([CodeCollection("alpha", "static")])
        store.replace_image_refs("alpha", [_ref("alpha")], synced_at=T0, deactivate_missing=True)
        store.record_mirror_failure("alpha", upstream_url="u", action="clone", error="e", attempted_at=T0)
        before = store.catalog_pointers(), store.list_mirrors(), store.list_image_refs("alpha")
        own_server.stop()

        # what serve answers the catalog from, asked before: the last good answer
        after = store.catalog_pointers(), store.list_mirrors(), store.list_image_refs("alpha")
        assert after == before
        assert before[0]["alpha"].latest_tag == "main-aaaaaaa-bbbbbbb"
        # never asked: the outage is said
        with pytest.raises(StateUnavailable):
            store.list_image_refs("never-asked")
        with pytest.raises(StateUnavailable):
            store.ping()
        with pytest.raises(StateUnavailable):
            store.upsert_collections([CodeCollection("beta", "static")])
        reason = store.unreachable()
        assert reason is not None
        assert "unreachable for" in reason
        assert PASSWORD not in reason

        own_server.start()
        _wait(lambda: _pings(store), "the store to reach the server again")
        store.upsert_collections([CodeCollection("beta", "static")])
        assert [c.slug for c in store.list_collections()] == ["alpha", "beta"]
        assert store.unreachable() is None


def _ref(slug: str) -> ImageRefRecord:
    return ImageRefRecord(
        slug,
        "main",
        "branch",
        "ghcr.io/o/r",
        "main-aaaaaaa-bbbbbbb",
        None,
        "aaaaaaa",
        "bbbbbbb",
        T0,
        "config",
        is_latest=True,
        is_prerelease=True,
    )


def _pings(store: Store) -> bool:
    try:
        store.ping()
    except StateUnavailable:
        return False
    return True


@pytest.mark.slow
def test_a_store_opened_while_the_server_is_down_migrates_when_it_comes_back(own_server: PgServer) -> None:
    url = own_server.create_database()
    own_server.stop()
    with pytest.raises(StateUnavailable):
        Store.open(url)

    with Store.open(url, connect_later=True) as store:
        with pytest.raises(StateUnavailable):
            store.list_collections()
        own_server.start()
        _wait(lambda: _pings(store), "the store to reach the server")
        assert store.schema_version == len(migrations.MIGRATIONS)
        assert store.list_collections() == []


def test_a_run_lock_is_held_by_one_process_until_its_connection_ends(tmp_path: Path, pg_url: str) -> None:
    config = load_config(_config(tmp_path, pg_url), environ={"CCCATALOG_STATE_URL": pg_url})
    with Store.open(config.state) as one, Store.open(config.state) as two:
        first, second = Locks.for_state(config, one), Locks.for_state(config, two)
        held = first.run("images").try_acquire()
        assert held is not None
        assert second.run("images").try_acquire() is None
        assert second.run("images").is_held()
        assert second.run("git").try_acquire() is not None  # another lock altogether
        with connect(pg_url) as admin:  # what the server does when the holder dies
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        _wait(lambda: not second.run("images").is_held(), "the lock to be dropped with its connection")
        assert not held.alive()
        taken = second.run("images").try_acquire()
        assert taken is not None
        taken.release()
        assert not first.run("images").is_held()  # at once: released, not left to the connection's end
    assert not (tmp_path / "state" / "locks").exists()  # no lock files: the database holds the locks


def _config(tmp_path: Path, url: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(f"git: {{data_dir: {tmp_path / 'git'}}}\n")
    return path


def test_psycopg_errors_keep_row_data_out(pg_url: str) -> None:
    with Store.open(pg_url) as store, pytest.raises(StateError) as err:
        store.upsert_collections([CodeCollection("x", None, name="row-secret")])  # type: ignore[arg-type]
    assert "row-secret" not in str(err.value)
    assert isinstance(err.value.__cause__, type(None))
    assert not isinstance(err.value, psycopg.Error)


def test_check_reads_the_databases_version_and_changes_nothing(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, pg_url)

    def check() -> tuple[int, dict[str, str]]:
        code = run(["check", "-c", str(path), "--json"])
        out, err = capsys.readouterr()
        assert PASSWORD not in out + err
        return code, {c["subject"]: c["detail"] for c in json.loads(out)["checks"]}

    monkeypatch.setenv("CCCATALOG_STATE_URL", pg_url)
    code, checks = check()
    assert code == 0
    assert checks["CCCATALOG_STATE_URL"].endswith(": empty: the first sync or serve creates the schema")
    assert "postgres:***@" in checks["CCCATALOG_STATE_URL"]
    assert _rows(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]

    Store.open(pg_url).close()
    code, checks = check()
    assert f"schema version {len(migrations.MIGRATIONS)} (current)" in checks["CCCATALOG_STATE_URL"]

    monkeypatch.setenv("CCCATALOG_STATE_URL", pg_url.replace(PASSWORD, "Wr0ng-Passw0rd-123"))
    code, checks = check()
    assert code == 1
    assert "password authentication failed" in checks["CCCATALOG_STATE_URL"]
    assert "Wr0ng-Passw0rd-123" not in checks["CCCATALOG_STATE_URL"]


def test_a_predecessor_database_is_named_by_check_and_adopted_by_the_first_serve(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_predecessor_pg(pg_url)
    path = _config(tmp_path, pg_url)
    monkeypatch.setenv("CC_CATALOG_DB_URL", pg_url.replace("postgresql://", "postgresql+psycopg2://"))

    assert run(["check", "-c", str(path), "--json"]) == 0
    checks = {c["subject"]: c["detail"] for c in json.loads(capsys.readouterr().out)["checks"]}
    assert "the predecessor's tables: the first sync or serve adopts them" in checks["CC_CATALOG_DB_URL"]
    assert state_database_version(pg_url) is None

    assert run(["-q", "serve", "-c", str(path), "--get", "/api/v1/catalog/codecollections"]) == 0
    assert capsys.readouterr().out == "200\n[]\n"  # this config lists none of its collections
    assert state_database_version(pg_url) == len(migrations.MIGRATIONS)
    assert _rows(pg_url, "SELECT count(*) FROM cccatalog_image_refs") == [(6,)]


def test_two_catalogs_on_one_server_do_not_share_locks(tmp_path: Path, pg_server: PgServer) -> None:
    """Advisory locks belong to a database: another cccatalog on the same server is not a replica."""
    urls = [pg_server.create_database(), pg_server.create_database()]
    try:
        configs = [
            load_config(_config(tmp_path / str(i), url), environ={"CCCATALOG_STATE_URL": url})
            for i, url in enumerate(urls)
        ]
        with Store.open(configs[0].state) as one, Store.open(configs[1].state) as two:
            held = Locks.for_state(configs[0], one).run("images").try_acquire()
            assert held is not None
            other = Locks.for_state(configs[1], two).run("images")
            assert not other.is_held()
            taken = other.try_acquire()
            assert taken is not None
            taken.release()
            held.release()
    finally:
        for url in urls:
            pg_server.drop_database(url)
