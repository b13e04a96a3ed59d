"""The serving benchmark runs at its smoke size, so it cannot rot: exit 0 and a JSON row for every cell.

It proves the script still builds its fixtures, starts all five servers and replays every request
mix against each; it proves nothing about speed (a shared CI machine cannot). CI installs nginx and
fcgiwrap with `apt-get install nginx-light fcgiwrap`; without them the test is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchsmoke import needs_nginx, run_benchmark

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "serving" / "bench_serving.py"
SMOKE_SECONDS = 55  # about 10 s alone


@pytest.mark.timeout(SMOKE_SECONDS + 20)
@needs_nginx
def test_serving_benchmark_replays_every_mix_against_every_server(tmp_path: Path) -> None:
    data, out = run_benchmark(str(SCRIPT), tmp_path / "serving.json", seconds=SMOKE_SECONDS)
    rows = data["rows"]
    servers = {
        "cccatalog",
        "cccatalog-packcache",
        "cccatalog-nocache",
        "nginx-fcgiwrap",
        "git-daemon",
        "raw-upload-pack",
    }
    mixes = {row["mix"] for row in rows} - {"full-clone-miss"}
    assert {"info-refs", "ls-refs", "full-clone", "incremental-fetch", "depth-1", "filter-blob-none"} <= mixes
    cells = {(row["server"], row["mix"], row["concurrency"]) for row in rows}
    # every request a cache miss: run only where a pack cache could answer, and against the floor
    missing = [s for s in servers if s.startswith(("cccatalog", "raw"))]
    misses = {(s, "full-clone-miss", n) for s in missing for n in (1, 2)}
    assert cells == {(s, m, n) for s in servers for m in mixes for n in (1, 2)} | misses
    for row in rows:
        assert row["errors"] == 0, row
        assert row["requests"] > 0, row
        assert row["bytes_per_request"] > 0, row
        assert row["cpu_seconds_per_request"] >= 0, row
    clones = {row["server"]: row for row in rows if row["mix"] == "full-clone" and row["concurrency"] == 1}
    # Every server answered the same captured request with the same pack (sideband framing varies a little).
    sizes = [row["bytes_per_request"] for row in clones.values()]
    assert max(sizes) < min(sizes) * 1.01, clones
    assert clones["cccatalog"]["server_peak_rss_mib"] > 0
    # The advertisement cache changes how an answer is produced, never its bytes.
    adverts = {(r["server"], r["mix"]): r["bytes_per_request"] for r in rows if r["concurrency"] == 1}
    for mix in ("info-refs", "ls-refs"):
        assert (
            adverts[("cccatalog", mix)]
            == adverts[("cccatalog-nocache", mix)]
            == adverts[("nginx-fcgiwrap", mix)]
        )
    # From the pack cache or not, the same request gets a pack of the same size.
    assert clones["cccatalog-packcache"]["bytes_per_request"] > 0
    assert len(data["targets"]) == 10
    assert "## Targets" in out
