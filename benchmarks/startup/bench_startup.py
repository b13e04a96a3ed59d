"""Start-up time of every way cccatalog ships: the PyInstaller binary (one file, one folder), the pip
console script and `python -m cccatalog`, beside the floors they cannot beat (a bare interpreter, and
one importing Typer, the CLI framework every command needs).

    python -m benchmarks.startup.bench_startup --size full     # builds both binaries (~2 min)
    python -m benchmarks.startup.bench_startup --size smoke    # no build: interpreter forms only (CI)
    python -m benchmarks.startup.bench_startup --size smoke --binary dist/cccatalog   # and that binary
                                                               # (CI: the one it built, $CCCATALOG_BINARY)

Each contender runs `--help` and `--version` in turns (round-robin, so load drift hits all alike);
the table gives the median and p90 wall time and the ratio to `python -m cccatalog`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.machine import machine

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = "python -m cccatalog"


@dataclass(frozen=True)
class Contender:
    name: str
    argv: tuple[str, ...]  # the command; the benchmark appends --help / --version
    floor: bool = False  # a floor is run as is, without the arguments


@dataclass
class Row:
    contender: str
    command: str
    runs: int
    median_ms: float
    p90_ms: float
    vs_python_m: float | None


def log(message: str) -> None:
    print(f"[startup {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_binaries(dist: Path) -> dict[str, Path]:
    """Build the one-file and one-folder binaries with tools/build_binary.sh; returns name -> executable."""
    built = {}
    for mode, flag in (("onefile", []), ("onedir", ["--onedir"])):
        out = dist / mode
        env = {
            **os.environ,
            "DIST": str(out),
            "WORK": str(dist / f"build-{mode}"),
            "BUILD_PYTHON": sys.executable,
        }
        log(f"building the {mode} binary")
        script = str(ROOT / "tools" / "build_binary.sh")
        subprocess.run(["bash", script, *flag], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        exe = out / "cccatalog" if mode == "onefile" else out / "cccatalog" / "cccatalog"
        if not exe.is_file():
            raise SystemExit(f"the {mode} build made no {exe}")
        built[mode] = exe
    return built


def contenders(binaries: dict[str, Path]) -> list[Contender]:
    found = [
        Contender("python -c pass (interpreter floor)", (sys.executable, "-c", "pass"), floor=True),
        Contender(
            "python -c 'import typer' (CLI framework floor)",
            (sys.executable, "-c", "import typer"),
            floor=True,
        ),
        Contender(REFERENCE, (sys.executable, "-m", "cccatalog")),
    ]
    script = Path(sys.executable).parent / "cccatalog"
    if script.is_file():
        found.append(Contender("cccatalog console script (pip)", (str(script),)))
    for mode, exe in binaries.items():
        found.append(Contender(f"PyInstaller {mode}", (str(exe),)))
    return found


def time_once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd="/")
    return time.perf_counter() - started


def measure(found: list[Contender], commands: list[str], runs: int) -> list[Row]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = str(ROOT)  # `python -m cccatalog` from this tree, whatever the cwd
    samples: dict[tuple[str, str], list[float]] = {}
    jobs = [(c, cmd) for cmd in commands for c in found if not (c.floor and cmd != commands[0])]
    for c, cmd in jobs:  # warm the page cache and the onefile extraction directory once
        time_once([*c.argv, *([] if c.floor else [cmd])], env)
    for _ in range(runs):
        for c, cmd in jobs:
            argv = [*c.argv, *([] if c.floor else [cmd])]
            samples.setdefault((c.name, "-" if c.floor else cmd), []).append(time_once(argv, env))
    rows = []
    for (name, cmd), times in samples.items():
        times.sort()
        rows.append(
            Row(
                name,
                cmd,
                len(times),
                statistics.median(times) * 1000,
                times[min(len(times) - 1, int(len(times) * 0.9))] * 1000,
                None,
            )
        )
    for row in rows:
        ref = next((r for r in rows if r.contender == REFERENCE and r.command == row.command), None)
        if ref is not None:
            row.vs_python_m = round(ref.median_ms / row.median_ms, 2)
    return rows


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1)


def report(rows: list[Row]) -> str:
    lines = [
        "| contender | command | median ms | p90 ms | x vs `python -m cccatalog` |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "-" if r.vs_python_m is None else f"{r.vs_python_m:.2f}x"
        lines.append(f"| {r.contender} | `{r.command}` | {r.median_ms:.0f} | {r.p90_ms:.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("smoke", "full"), default="full")
    parser.add_argument("--runs", type=int, help="timed runs per contender and command (full 21, smoke 3)")
    parser.add_argument("--dist", type=Path, help="use binaries already built here (<dist>/onefile, onedir)")
    parser.add_argument(
        "--binary",
        type=Path,
        default=os.environ.get("CCCATALOG_BINARY") or None,
        help="also time this one-file binary, as built by tools/build_binary.sh [$CCCATALOG_BINARY]",
    )
    parser.add_argument("--output", "--json-out", type=Path, default=Path("bench-startup.json"))
    args = parser.parse_args(argv)
    runs = args.runs or (21 if args.size == "full" else 3)

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        binaries: dict[str, Path] = {}
        if args.dist:
            layout = {"onefile": "onefile/cccatalog", "onedir": "onedir/cccatalog/cccatalog"}
            binaries = {m: p for m, rel in layout.items() if (p := args.dist / rel).is_file()}
        elif args.size == "full":
            if shutil.which("objdump") is None:
                raise SystemExit("building the binary needs binutils (apt-get install binutils)")
            binaries = build_binaries(Path(tmp))
        if args.binary:
            if not args.binary.is_file():
                raise SystemExit(f"--binary {args.binary}: no such file")
            binaries["release"] = args.binary  # the one CI built and toured
        found = contenders(binaries)
        log(f"{len(found)} contenders x {runs} runs")
        rows = measure(found, ["--help", "--version"], runs)
        sizes = {m: _size_mb(p if m != "onedir" else p.parent) for m, p in binaries.items()}

    table = report(rows)
    print(table)
    for mode, mb in sizes.items():
        print(f"binary {mode}: {mb} MB")
    result = {
        "size": args.size,
        "runs": runs,
        "machine": machine(),
        "rows": [asdict(r) for r in rows],
        "binary_mb": sizes,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
