"""The benchmarks run at their smoke size, so they cannot rot: exit 0 and a JSON result with every row.

Benchmarks are not tests of speed (a loaded CI machine proves nothing); these only prove that each
script still measures what its README says it measures.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import benchsmoke

pytestmark = pytest.mark.bench

SMOKE_SECONDS = 120  # each takes well under 30 s alone; CI machines are shared


def run_benchmark(module: str, output: Path) -> dict[str, Any]:
    return benchsmoke.run_benchmark(module, output, seconds=SMOKE_SECONDS)[0]


@pytest.mark.timeout(SMOKE_SECONDS + 30)
def test_maintenance_benchmark_measures_clone_cpu_of_every_kind_of_mirror(tmp_path: Path) -> None:
    data = run_benchmark("benchmarks.maintenance.bench_maintenance", tmp_path / "maintenance.json")
    rows = {row["mirror"]: row for row in data["rows"]}
    assert set(rows) == {
        "git clone --mirror (fresh)",
        "git clone --mirror + 2 fetches",
        "git clone --mirror + 2 fetches + git gc",
        "cccatalog sync (first + 2 syncs)",
        "predecessor mirror adopted by cccatalog",
    }
    assert rows["git clone --mirror (fresh)"]["cpu_ratio"] == 1.0
    assert rows["cccatalog sync (first + 2 syncs)"]["stats"]["bitmap"] is True
    assert all(row["server_cpu_s"] > 0 and row["pack_mib"] > 0 for row in rows.values())
    assert [t["name"] for t in data["targets"]] == ["server CPU per full clone vs fresh clone --mirror"]


@pytest.mark.timeout(SMOKE_SECONDS + 30)
@pytest.mark.skipif(
    shutil.which("docker-registry") is None or shutil.which("skopeo") is None,
    reason="needs docker-registry and skopeo (apt-get install docker-registry skopeo)",
)
def test_resolve_benchmark_compares_cccatalog_skopeo_and_predecessor_in_both_modes(tmp_path: Path) -> None:
    data = run_benchmark("benchmarks.resolve.bench_resolve", tmp_path / "resolve.json")
    approaches = {
        "cccatalog CLI, cold cache",
        "cccatalog CLI, warm cache",
        "cccatalog library, cold cache",
        "cccatalog library, warm cache",
        "what-if: library 16/host, cold cache",
        "what-if: library 16/host, warm cache",
        "skopeo loop",
        "predecessor algorithm",
    }
    for mode in ("anonymous", "token"):
        rows = {row["approach"]: row for row in data["rows"] if row["mode"] == mode}
        assert set(rows) == approaches
        assert all(row["seconds"] > 0 and row["requests"] > 0 for row in rows.values())
        assert rows["skopeo loop"]["vs_skopeo"] == 1.0
        # warm: one listing and one HEAD per candidate (plus the 401 and token mint in token mode)
        warm = rows["cccatalog library, warm cache"]["detail"]
        assert set(warm) <= {"GET tags", "HEAD manifest-head", "GET token"}
    assert len(data["targets"]) == 6


@pytest.mark.timeout(SMOKE_SECONDS + 30)
def test_sync_benchmark_times_every_contender_in_every_scenario(tmp_path: Path) -> None:
    data = run_benchmark("benchmarks.sync.bench_sync", tmp_path / "sync.json")
    cells = {(row["scenario"], row["contender"]) for row in data["rows"]}
    contenders = {
        "cccatalog sync -j1",
        "cccatalog sync -j4",
        "shell loop of plain git",
        "xargs -P4 of plain git",
    }
    scenarios = {"first clone", "no-op", "2 of 8 changed"}
    assert cells == {(s, c) for s in scenarios for c in contenders}
    assert all(row["seconds"] > 0 for row in data["rows"])


@pytest.mark.timeout(SMOKE_SECONDS + 30)
def test_catalog_benchmark_compares_today_and_now_on_both_engines_and_replicas(tmp_path: Path) -> None:
    data = run_benchmark("benchmarks.catalog.bench_catalog", tmp_path / "catalog.json")
    scaling = {(r["engine"], r["request"], r["implementation"]) for r in data["scaling"]}
    assert scaling == {
        (engine, request, impl)
        for engine in ("SQLite", "PostgreSQL")
        for request in ("list", "one collection")
        for impl in ("today", "now")
    }
    assert all(r["median_ms"] > 0 and r["speedup_vs_today"] > 0 for r in data["scaling"])
    setups = [(r["setup"], r["replicas"]) for r in data["replicas"]]
    assert setups == [("1 replica, SQLite", 1), ("1 replica, PostgreSQL", 1), ("3 replicas, PostgreSQL", 3)]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in data["replicas"])
    assert len(data["targets"]) == 4


@pytest.mark.timeout(SMOKE_SECONDS + 30)
def test_pool_outage_benchmark_times_both_pools_through_a_postgres_outage(tmp_path: Path) -> None:
    data = run_benchmark("benchmarks.catalog.pool_outage", tmp_path / "pool.json")
    rows = {row["pool"]: row for row in data["rows"]}
    assert set(rows) == {"cccatalog's pool and breaker", "psycopg_pool.ConnectionPool"}
    assert all(row["first_failure_s"] >= 0 for row in rows.values())
    assert all(row["next_failures_ms"] >= 0 for row in rows.values())
    assert all(row["back_after_s"] >= 0 for row in rows.values())
    # what the store's docstring rests on: while the database is down its reads never wait for it
    assert rows["cccatalog's pool and breaker"]["next_failures_ms"] < data["sizes"]["wait"] * 1000 / 2


@pytest.mark.timeout(SMOKE_SECONDS + 30)
@pytest.mark.skipif(
    shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (apt-get install openssh-client)"
)
def test_transfer_benchmark_sizes_a_one_commit_update_against_a_full_export(tmp_path: Path) -> None:
    data = run_benchmark("benchmarks.transfer.bench_transfer", tmp_path / "transfer.json")
    rows = {row["what"]: row for row in data["rows"]}
    assert set(rows) == {
        "full export (whole mirror)",
        "update: one new commit",
        "re-bake the mirrors",
        "import the one-commit update",
        "import a full export",
    }
    update, full = rows["update: one new commit"], rows["full export (whole mirror)"]
    assert 0 < update["bytes"] < full["bytes"]
    assert update["ratio"] == round(update["bytes"] / full["bytes"], 5)
    assert all(rows[name]["seconds"] > 0 for name in ("re-bake the mirrors", "import the one-commit update"))
    assert [t["name"] for t in data["targets"]] == ["one-commit update vs full export < 1 %"]


@pytest.mark.timeout(SMOKE_SECONDS + 30)
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo (apt-get install skopeo)")
def test_images_benchmark_mirrors_cold_and_warm_beside_skopeo_and_sizes_an_update(tmp_path: Path) -> None:
    data = run_benchmark("benchmarks.images.bench_images", tmp_path / "images.json")
    rows = {(row["phase"], row["tool"]): row for row in data["rows"]}
    tools = ("cccatalog", "cccatalog, 4 at once", "skopeo copy loop", "skopeo sync")
    assert set(rows) == {(phase, tool) for phase in ("cold", "warm") for tool in tools}
    assert all(row["seconds"] > 0 and row["vs_cccatalog"] > 0 for row in rows.values())
    assert rows[("cold", "cccatalog")]["vs_cccatalog"] == 1.0
    sizes = data["sizes"]
    assert 0 < sizes["update_image_bytes"] < sizes["full_export_image_bytes"] / data["parameters"]["images"]
    assert len(data["targets"]) == 3
