"""Running a benchmark script at its smoke size from the tests: the one place that waits for it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(target: str, output: Path, *, seconds: float) -> tuple[dict[str, Any], str]:
    """Run `target` (a module, or a script path ending in .py) with `--size smoke --output OUTPUT`.

    Fails the test unless it exits 0 within `seconds` (past that it gets SIGTERM, so the servers and
    registries it started are stopped). Returns its JSON result, checked to be a smoke run with the
    machine described, and everything it printed.
    """
    how = [target] if target.endswith(".py") else ["-m", target]
    argv = [sys.executable, *how, "--size", "smoke", "--output", str(output)]
    with subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, _ = proc.communicate(timeout=15)
            pytest.fail(f"{target} ran past {seconds}s:\n{out}")
    assert proc.returncode == 0, out
    data: dict[str, Any] = json.loads(output.read_text())
    assert data["size"] == "smoke"
    assert data["machine"]["nproc"]
    return data, out


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


# The serving and fleet benchmarks run nginx + fcgiwrap beside cccatalog.
needs_nginx = pytest.mark.skipif(
    _tool("nginx") is None or _tool("fcgiwrap") is None,
    reason="needs nginx and fcgiwrap (apt-get install nginx-light fcgiwrap)",
)
