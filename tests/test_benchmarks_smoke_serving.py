"""The serving benchmark runs at its smoke size, so it cannot rot: exit 0 and a JSON row for every cell.

It proves the script still builds its fixtures, starts all five servers and replays every request
mix against each; it proves nothing about speed (a shared CI machine cannot). CI installs nginx and
fcgiwrap with `apt-get install nginx-light fcgiwrap`; without them the test is skipped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.benchsmoke import run_benchmark

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "serving" / "bench_serving.py"
SMOKE_SECONDS = 55  # about 10 s alone


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


@pytest.mark.timeout(SMOKE_SECONDS + 20)
@pytest.mark.skipif(
    _tool("nginx") is None or _tool("fcgiwrap") is None,
    reason="needs nginx and fcgiwrap (apt-get install nginx-light fcgiwrap)",
)
def test_serving_benchmark_replays_every_mix_against_every_server(tmp_path: Path) -> None:
    data, out = run_benchmark(str(SCRIPT), tmp_path / "serving.json", seconds=SMOKE_SECONDS)
    rows = data["rows"]
    servers = {"cccatalog", "cccatalog-nocache", "nginx-fcgiwrap", "git-daemon", "raw-upload-pack"}
    mixes = {row["mix"] for row in rows}
    assert {"info-refs", "ls-refs", "full-clone", "incremental-fetch", "depth-1", "filter-blob-none"} <= mixes
    cells = {(row["server"], row["mix"], row["concurrency"]) for row in rows}
    assert cells == {(s, m, n) for s in servers for m in mixes for n in (1, 2)}
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
    assert len(data["targets"]) == 7
    assert "## Targets" in out
