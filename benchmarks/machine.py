"""The machine a benchmark ran on, recorded beside its results so the numbers can be read in context."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path


def version(argv: Sequence[str]) -> str:
    """First line a tool prints about its version, `missing` when it is not installed."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine(tools: dict[str, Sequence[str]] | None = None) -> dict[str, str]:
    """CPU, memory, kernel, Python and git versions, plus `tools` (name -> version argv)."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    meminfo = Path("/proc/meminfo").read_text(errors="replace").splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    mem_kb = next((int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal:")), 0)
    described = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": version(["git", "--version"]),
    }
    described.update({name: version(argv) for name, argv in (tools or {}).items()})
    described["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return described
