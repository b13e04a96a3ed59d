"""Three `serve` replicas on one PostgreSQL database, each its own process: one sync of a kind at a time
whichever replica is asked, the same answers from every replica the moment a poll commits, jobs
answered by any replica, and a scheduler that moves to another replica when its leader dies. And the
database stopping under a replica that clients are cloning from and reading the catalog of."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cccatalog.cli import run
from tests.apifixtures import (
    Collection,
    bearer,
    build,
    image_tag,
    wait_for_job,
    write_builds,
    write_catalog_config,
)
from tests.gitfixtures import git, http_upstream
from tests.hafixtures import Replica, SlowCatalog, refs, replica_config, replicas, slow_catalog
from tests.pgfixtures import PASSWORD, PgServer, connect, running_postgres
from tests.waiting import wait_until

# replicas are processes of their own, and the database stops and starts: seconds each
pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CATALOG = "/api/v1/catalog/codecollections"
ADMIN = "/api/v1/admin"
NAMES = ("r0", "r1", "r2")


def _jobs(url: str) -> list[tuple[str, str, str, str | None, str, str | None]]:
    """(id, kind, state, replica, started_at, finished_at) of every job, oldest first."""
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT id, kind, state, replica, started_at, finished_at FROM cccatalog_jobs ORDER BY started_at"
        ).fetchall()
    return [tuple(str(v) if v is not None else None for v in row) for row in rows]  # type: ignore[misc]


def _pointers(replica: Replica, slug: str) -> tuple[str | None, str | None]:
    entry = httpx.get(f"{replica.url}{CATALOG}/{slug}", timeout=10).json()
    return entry["latest_image_tag"], entry["stable_image_tag"]


def _configs(tmp_path: Path, catalog: SlowCatalog, slugs: tuple[str, ...]) -> list[Path]:
    return [replica_config(tmp_path, n, upstream_url=catalog.url, slugs=slugs) for n in NAMES]


def test_concurrent_admin_syncs_across_replicas_run_one_at_a_time(tmp_path: Path, pg_url: str) -> None:
    with (
        slow_catalog({"alpha": refs("aaaaaaa")}, delay=0.4) as catalog,
        replicas(_configs(tmp_path, catalog, ("alpha",)), state_url=pg_url) as running,
    ):

        def post(i: int) -> tuple[str, httpx.Response]:
            replica = running[i % len(running)]
            return replica.name, httpx.post(
                f"{replica.url}{ADMIN}/sync-catalog", headers=bearer(), timeout=30
            )

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(post, range(20)))

        codes = sorted(a.status_code for _, a in answers)
        assert set(codes) <= {202, 409}, [a.text for _, a in answers]
        started = [(name, a.json()) for name, a in answers if a.status_code == 202]
        assert started
        busy = [a.json()["detail"] for _, a in answers if a.status_code == 409]
        assert all("locked by another cccatalog process" in d or "already running" in d for d in busy)
        # every replica answers about every job, whichever replica started it
        for _, job in started:
            bodies = [wait_for_job(httpx.Client(base_url=r.url), job["job_id"]) for r in running]
            assert [b["state"] for b in bodies] == ["succeeded"] * len(running)
            assert all(b == bodies[0] for b in bodies)
        # later requests start new jobs: each runs alone too
        for replica in running:
            later = httpx.post(f"{replica.url}{ADMIN}/sync-catalog?wait=true", headers=bearer(), timeout=30)
            assert later.status_code == 200, later.text

    jobs = _jobs(pg_url)
    assert len(jobs) == len(started) + len(running)
    assert {replica for *_, replica, _, _ in jobs} == set(NAMES)  # they ran on every replica
    spans = sorted((datetime.fromisoformat(s), datetime.fromisoformat(str(f))) for *_, s, f in jobs)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert catalog.most_at_once == 1  # the registry side agrees: never two polls at once


def test_every_replica_answers_the_same_pointers_the_moment_a_poll_commits(
    tmp_path: Path, pg_url: str
) -> None:
    with (
        slow_catalog({"alpha": refs("aaaaaaa"), "beta": refs("bbbbbbb", "v2.0.0")}, delay=0) as catalog,
        replicas(_configs(tmp_path, catalog, ("alpha", "beta")), state_url=pg_url) as running,
    ):
        first, *others = running
        assert [_pointers(r, "alpha") for r in running] == [(None, None)] * 3

        for round_, main in enumerate(("1111111", "2222222", "3333333")):
            catalog.refs["alpha"] = refs(main, f"v1.{round_}.0")
            asked = running[round_ % 3]  # a different replica polls each time
            answer = httpx.post(f"{asked.url}{ADMIN}/sync-catalog?wait=true", headers=bearer(), timeout=30)
            assert answer.status_code == 200, answer.text
            expected = (f"main-{main}-1111111", f"v1.{round_}.0-2222222-1111111")
            # no waiting: the answer above came after the commit
            assert [_pointers(r, "alpha") for r in running] == [expected] * 3
            lists = [httpx.get(f"{r.url}{CATALOG}", timeout=10).json() for r in running]
            assert lists[0] == lists[1] == lists[2]
            assert [e["slug"] for e in lists[0]] == ["alpha", "beta"]
        assert [_pointers(r, "beta") for r in (first, *others)] == [
            ("main-bbbbbbb-1111111", "v2.0.0-2222222-1111111")
        ] * 3


def _runs_by(url: str) -> list[str | None]:
    return [replica for _, kind, _, replica, _, _ in _jobs(url) if kind == "sync-catalog"]


def test_when_the_scheduler_leader_dies_another_replica_runs_the_next_poll(
    tmp_path: Path, pg_url: str
) -> None:
    minute = 0.3  # the scheduler's minute, in seconds: polls every ~0.3 s
    with (
        slow_catalog({"alpha": refs("aaaaaaa")}, delay=0.05) as catalog,
        replicas(_configs(tmp_path, catalog, ("alpha",)), state_url=pg_url, minute_seconds=minute) as running,
    ):
        wait_until(lambda: len(_runs_by(pg_url)) >= 6, what="six scheduled polls")
        runs = _runs_by(pg_url)
        leader = runs[0]
        assert set(runs) == {leader}, runs  # one replica polls; the others skip
        assert catalog.most_at_once == 1
        by_name = {r.name: r for r in running}
        assert by_name[str(leader)].log.read_text().count("now leads the scheduled sync-catalog runs") == 1
        for other in set(NAMES) - {leader}:
            assert "another replica leads the scheduled runs" in by_name[other].log.read_text()

        by_name[str(leader)].kill()
        before = len(runs)
        wait_until(lambda: set(_runs_by(pg_url)[before:]) - {leader}, what="a poll by another replica")
        successor = next(r for r in _runs_by(pg_url)[before:] if r != leader)

        def since_successor() -> list[str | None]:
            after = _runs_by(pg_url)[before:]
            return after[after.index(successor) :]

        wait_until(lambda: len(since_successor()) >= 4, what="the successor's next polls")
        # past the first poll the killed leader may have started, only the successor polls
        assert set(since_successor()) == {successor}


def _answers(replicas_: list[Replica], path: str) -> list[Any]:
    return [httpx.get(f"{r.url}{path}", timeout=10).json() for r in replicas_]


def test_git_status_says_which_replica_answered(tmp_path: Path, pg_url: str, make_upstream: Any) -> None:
    up = make_upstream("alpha")
    with slow_catalog({"alpha": refs("aaaaaaa")}, delay=0) as catalog:
        # alpha mirrored, on each replica's own disk
        configs = [
            replica_config(
                tmp_path,
                n,
                upstream_url=catalog.url,
                slugs=("alpha",),
                git={"enabled": True},
                git_urls={"alpha": up.url},
            )
            for n in NAMES[:2]
        ]
        with replicas(configs, state_url=pg_url) as running:
            synced = httpx.post(f"{running[0].url}{ADMIN}/sync-git?wait=true", headers=bearer(), timeout=60)
            assert synced.status_code == 200, synced.text
            first, second = _answers(running, "/api/v1/git/repos/alpha")

    assert (first["replica"], second["replica"]) == ("r0", "r1")
    assert first["present"] is True
    assert first["head_commit"] == up.sha("main")
    # r1's disk has no mirror: its status is its own, not r0's
    assert (second["present"], second["head_commit"]) == (False, None)
    assert Path(first["local_path"]).parent.parent.name == "r0"


@pytest.mark.parametrize("slugs", [("alpha",)])
def test_jobs_of_a_replica_that_stopped_mid_run_are_reported_failed(
    tmp_path: Path, pg_url: str, slugs: tuple[str, ...]
) -> None:
    with (
        slow_catalog({"alpha": refs("aaaaaaa")}, delay=30) as catalog,
        replicas(_configs(tmp_path, catalog, slugs)[:2], state_url=pg_url) as running,
    ):
        started = httpx.post(f"{running[0].url}{ADMIN}/sync-catalog", headers=bearer(), timeout=10).json()
        wait_until(lambda: catalog.in_flight == 1, what="the poll to reach the catalog")
        running[0].kill()
        wait_until(
            lambda: (
                httpx.get(f"{running[1].url}{ADMIN}/jobs/{started['job_id']}", headers=bearer()).json()[
                    "state"
                ]
                != "running"
            ),
            what="the job to be reported",
        )
        job = httpx.get(f"{running[1].url}{ADMIN}/jobs/{started['job_id']}", headers=bearer()).json()
    assert job["state"] == "failed"
    assert job["error"] == "the replica running it (r0) stopped before it finished"


# --- the database goes away -------------------------------------------------------------------------

# How long the database stays down. The scenario is 30 s; CI runs a shorter outage (the behaviour is
# the same after the first second: every call answers at once from the last good read).
OUTAGE_SECONDS = 8


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of this test's own, which it stops and starts."""
    with running_postgres() as server:
        yield server


class Clients:
    """Clones and catalog reads in a loop until stopped, counting what failed and how."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.stop = threading.Event()
        self.clones = self.reads = 0
        self.failures: list[str] = []
        self.bodies: list[object] = []
        self.threads = [threading.Thread(target=self._clone, args=(i,)) for i in range(2)]
        self.threads.append(threading.Thread(target=self._read))

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _clone(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            dest = self.tmp / f"clone-{n}-{i}"
            done = subprocess.run(
                ["git", "clone", "-q", "--depth=1", f"{self.url}/git/alpha.git", str(dest)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                self.failures.append(f"clone: {done.stderr.strip()}")
            self.clones += 1
            shutil.rmtree(dest, ignore_errors=True)
            i += 1

    def _read(self) -> None:
        while not self.stop.is_set():
            answer = httpx.get(f"{self.url}{CATALOG}/alpha", timeout=10)
            if answer.status_code != 200:
                self.failures.append(f"catalog: {answer.status_code} {answer.text}")
            else:
                self.bodies.append(answer.json())
            self.reads += 1
            self.stop.wait(0.02)  # a client's pace, not a wait for anything


def test_while_the_database_is_down_git_is_served_and_the_catalog_answers_from_its_last_read(
    tmp_path: Path, own_server: PgServer, make_upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = make_upstream("alpha")
    url = own_server.create_database()
    config = write_catalog_config(
        tmp_path / "site" / "config.yaml",
        [Collection("alpha", up.url, [build("main", "aaaaaa1"), build("v1.0.0", "bbbbbb1")])],
        state_path=None,
    )
    monkeypatch.setenv("CCCATALOG_STATE_URL", url)
    assert run(["-q", "sync", "-c", str(config)]) == 0
    with replicas([config], state_url=url) as [replica]:
        before = httpx.get(f"{replica.url}{CATALOG}/alpha").json()
        listed = httpx.get(f"{replica.url}{CATALOG}").json()
        assert before["latest_image_tag"] == image_tag("main", "aaaaaa1")
        assert httpx.get(f"{replica.url}/readyz").json()["status"] == "ok"

        with Clients(replica.url, tmp_path) as clients:
            wait_until(lambda: clients.clones >= 2, what="clones before the outage")
            own_server.stop()
            down_at = time.monotonic()
            wait_until(
                lambda: httpx.get(f"{replica.url}/readyz").json()["status"] == "degraded", what="readyz"
            )
            ready = httpx.get(f"{replica.url}/readyz")
            clones_before = clients.clones
            wait_until(
                lambda: time.monotonic() - down_at >= OUTAGE_SECONDS and clients.clones >= clones_before + 2,
                OUTAGE_SECONDS + 60,
                what="the outage to last its time, with clones going on",
            )
            clones_during = clients.clones - clones_before
            list_during = httpx.get(f"{replica.url}{CATALOG}")
            never_read = httpx.get(f"{replica.url}{CATALOG}/alpha/refs?include_inactive=true")
            job_during = httpx.post(f"{replica.url}{ADMIN}/sync-catalog", headers=bearer())
            own_server.start()
            wait_until(
                lambda: httpx.get(f"{replica.url}/readyz").json()["status"] == "ok", what="readyz after"
            )
            wait_until(
                lambda: clients.clones >= clones_before + clones_during + 2, what="clones after the outage"
            )

        assert clients.failures == []
        assert clones_during >= 2
        assert all(body == before for body in clients.bodies)
        assert ready.status_code == 200  # git still served: the replica stays in its Service
        [warning] = ready.json()["warnings"]
        assert "unreachable for" in warning
        assert "catalog answers come from the last good read" in warning
        assert PASSWORD not in ready.text
        assert list_during.status_code == 200
        assert list_during.json() == listed
        assert never_read.status_code == 503  # nothing to answer from: said, with when to come back
        assert never_read.headers["retry-after"] == "5"
        assert job_during.status_code == 503  # a sync cannot record anything: said, not queued
        assert job_during.headers["retry-after"] == "5"
        # back: writes work again, and every answer is fresh
        write_builds(config, "alpha", [build("main", "ccccccc"), build("v1.0.0", "bbbbbb1")])
        after = httpx.post(f"{replica.url}{ADMIN}/sync-catalog?wait=true", headers=bearer(), timeout=30)
        assert after.status_code == 200, after.text
        assert httpx.get(f"{replica.url}{CATALOG}/alpha").json()["latest_image_tag"] == image_tag(
            "main", "ccccccc"
        )
    assert PASSWORD not in replica.log.read_text()


def test_a_git_sync_running_on_one_replicas_volume_is_running_for_every_replica(
    tmp_path: Path, pg_url: str, make_upstream: Any
) -> None:
    """Git runs lock their own volume: another replica, asked about the job, must not take the lock
    of its own volume being free for the job's replica being gone."""
    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    with (
        http_upstream(tmp_path / "served") as upstream,
        slow_catalog({}, delay=0) as catalog,
    ):
        upstream.stall_seconds = 3.0
        configs = [
            replica_config(
                tmp_path,
                n,
                upstream_url=catalog.url,
                slugs=("alpha",),
                git={"enabled": True},
                git_urls={"alpha": upstream.repo_url("alpha")},
            )
            for n in NAMES[:2]
        ]
        with replicas(configs, state_url=pg_url) as [r0, r1]:
            started = httpx.post(f"{r0.url}{ADMIN}/sync-git", headers=bearer(), timeout=10).json()
            wait_until(
                lambda: upstream.seen_authorization, what="r0's fetch to reach the (stalling) upstream"
            )
            asked = httpx.get(f"{r1.url}{ADMIN}/jobs/{started['job_id']}", headers=bearer()).json()
            assert asked["state"] == "running"
            assert asked["replica"] == "r0"
            done = wait_for_job(httpx.Client(base_url=r1.url), started["job_id"], timeout=60)
    assert done["state"] == "succeeded", done
