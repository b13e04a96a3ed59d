"""Replicas on one real PostgreSQL tell the truth about faults: a job of a replica killed mid-run is
reported failed even while another replica runs a job of the same kind."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.apifixtures import bearer
from tests.hafixtures import refs, replica_config, replicas, slow_catalog
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

ADMIN = "/api/v1/admin"


def test_a_dead_replicas_job_is_failed_while_another_replica_runs_one_of_its_kind(
    tmp_path: Path, pg_url: str
) -> None:
    with slow_catalog({"alpha": refs("aaaaaaa")}, delay=10) as catalog:  # long enough for every check below
        configs = [
            replica_config(tmp_path, n, upstream_url=catalog.url, slugs=("alpha",)) for n in ("r0", "r1")
        ]
        with replicas(configs, state_url=pg_url) as (r0, r1):
            first = httpx.post(f"{r0.url}{ADMIN}/sync-catalog", headers=bearer(), timeout=10).json()["job_id"]
            wait_until(lambda: catalog.in_flight == 1, what="r0's poll to reach the catalog")
            r0.kill()
            second: list[str] = []

            def r1_started() -> bool:  # once the database has dropped the dead replica's lock
                answer = httpx.post(f"{r1.url}{ADMIN}/sync-catalog", headers=bearer(), timeout=10)
                if answer.status_code == 202:
                    second.append(answer.json()["job_id"])
                return bool(second)

            wait_until(r1_started, what="r1 to start a poll of its own")
            wait_until(lambda: catalog.in_flight == 2, what="r1's poll to reach the catalog")

            def state(job: str) -> str:
                answer = httpx.get(f"{r1.url}{ADMIN}/jobs/{job}", headers=bearer(), timeout=10)
                return str(answer.json()["state"])

            wait_until(lambda: state(first) != "running", 10, what="r0's job to be reported")
            dead = httpx.get(f"{r1.url}{ADMIN}/jobs/{first}", headers=bearer(), timeout=10).json()
            assert state(second[0]) == "running", "the live job of the same kind is not touched"
            assert catalog.in_flight >= 1
    assert dead["state"] == "failed"
    assert dead["error"] == "the replica running it (r0) stopped before it finished"
