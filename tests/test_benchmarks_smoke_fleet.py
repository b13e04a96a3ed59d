"""The fleet benchmark runs at its smoke size, so it cannot rot: exit 0 and a JSON row for every cell.

It proves the script still builds its repository, starts every server (serve with and without the
pack cache, with write on second sight, nginx+fcgiwrap with and without the packObjectsHook
prototype), runs real `git fetch --depth=2 --tags` fleets (one of them of three git agents),
replays, slow readers and one-off requests against each, reads the pack cache's counters and the
disk written, and times the hook; it proves nothing about speed (a shared CI machine cannot).
Without nginx and fcgiwrap it is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchsmoke import needs_nginx, run_benchmark

pytestmark = pytest.mark.bench
SMOKE_SECONDS = 90  # about 10 s alone


@pytest.mark.timeout(SMOKE_SECONDS + 20)
@needs_nginx
def test_fleet_benchmark_fetches_with_every_server_in_every_cell(tmp_path: Path) -> None:
    data, out = run_benchmark("benchmarks.fleet.bench_fleet", tmp_path / "fleet.json", seconds=SMOKE_SECONDS)
    caches = {"cccatalog", "cccatalog-second-sight"}
    servers = caches | {"cccatalog-nocache", "nginx-fcgiwrap", "nginx-fcgiwrap-hook"}
    cells = {(row["server"], row["cell"], row["concurrency"]) for row in data["rows"]}
    expected = {(s, c, n) for s in servers for c in ("fleet", "replay") for n in (2, 4)}
    expected |= {(s, c, 2) for s in servers for c in ("slow-readers", "beside-slow-readers")}
    expected |= {(s, "fleet-agents", 4) for s in servers}
    expected |= {(s, "one-off", 4) for s in caches | {"cccatalog-nocache"}}
    assert cells == expected
    for row in data["rows"]:
        assert row["failures"] == 0, row
        assert row["fetches"] > 0, row
        assert row["pack_bytes"] > 0, row
        assert row["server_cpu_per_fetch"] >= 0, row
    slow = [r for r in data["rows"] if r["cell"] == "slow-readers"]
    assert all(r["slow_reader_bytes"] > 0 for r in slow), "the slow readers read nothing"
    # every server delivered the same fetch: the same objects, so packs of about the same size
    sizes = [r["pack_bytes"] for r in data["rows"] if r["cell"] == "fleet"]
    assert max(sizes) < min(sizes) * 1.05
    assert data["fixture"]["refs"] > 10
    assert data["hook_hit"]["wall_ms"] > 0
    for row in data["rows"]:
        assert (row["git_answers"] >= 0) == (row["server"] in caches), row
        if row["server"] in caches and row["cell"] == "one-off":
            assert row["git_answers"] == row["fetches"], "a one-off request was answered from the cache"
            assert row["disk_dirtied_per_fetch"] is not None, row
    assert "## Targets" in out
