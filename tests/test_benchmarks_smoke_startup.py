"""The start-up benchmark runs at its smoke size (interpreter forms only, no binary build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchsmoke import run_benchmark

pytestmark = pytest.mark.bench


@pytest.mark.timeout(180)
def test_startup_benchmark_times_help_and_version_against_the_interpreter_floors(tmp_path: Path) -> None:
    data, out = run_benchmark("benchmarks.startup.bench_startup", tmp_path / "startup.json", seconds=150)
    rows = {(row["contender"], row["command"]): row for row in data["rows"]}
    assert ("python -m cccatalog", "--help") in rows
    assert ("python -m cccatalog", "--version") in rows
    assert rows[("python -m cccatalog", "--help")]["vs_python_m"] == 1.0
    assert any("interpreter floor" in name for name, _ in rows)
    assert all(row["median_ms"] > 0 and row["runs"] == data["runs"] for row in rows.values())
    assert "| python -m cccatalog | `--help` |" in out
