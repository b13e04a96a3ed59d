"""Benchmark `cccatalog export`/`import` against carrying everything again: a full export, a re-bake.

One upstream shaped like rw-cli-codecollection (its pack is 8.8 MB at full size: commits adding
codebundle files of incompressible text, tags every 50 commits, a few branches) is synced on a
"connected" side; a "site" gets it through a full export and import. Then the upstream gets one new
commit, the connected side syncs, and the site's manifest goes into `export --since`.

Measured, each as a `python -m cccatalog` process:

- size: the update carrying that one commit vs a full export of the same mirror (goal: under 1 %);
- time: importing that update at the site vs re-baking the mirrors (`cccatalog bake`, what a new
  release image costs), and vs importing the full export.

    python -m benchmarks.transfer.bench_transfer --size full
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script as well as with `python -m`
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine  # noqa: E402

RESULT = Path(__file__).with_name("results-full.json")
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "LC_ALL": "C",
}
EPOCH = 1_735_689_600  # 2025-01-01: generated repos are byte-identical from run to run
TIMEOUT = 1800
SLUG = "rw-cli-codecollection"


@dataclass(frozen=True)
class Size:
    commits: int
    file_bytes: int  # per file; three files per commit
    reps: int


SIZES = {
    "smoke": Size(commits=40, file_bytes=4000, reps=1),
    "full": Size(commits=780, file_bytes=5000, reps=3),
}


@dataclass
class Row:
    what: str
    bytes: int | None
    seconds: float | None
    ratio: float  # against the row it is compared with (1.0 for the baseline)
    against: str


def run(argv: Sequence[str], *, stdin: str | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        list(argv),
        input=stdin,
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def cccatalog(*args: str) -> float:
    """Run the CLI as a process; returns its wall time."""
    started = time.perf_counter()
    run([sys.executable, "-m", "cccatalog", "-q", *args])
    return time.perf_counter() - started


def make_upstream(path: Path, size: Size) -> None:
    """A bare repo of `size.commits` commits, each adding three codebundle files of random text."""
    rng = random.Random(42)  # noqa: S311 - test data, not crypto
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n"
    run(["git", "init", "-q", "--bare", "-b", "main", str(path)])
    parts = []
    for n in range(size.commits):
        lines = [
            "commit refs/heads/main",
            f"mark :{n + 1}",
            f"committer Bench <bench@example.invalid> {EPOCH + n * 3600} +0000",
            f"data {len(f'change {n}')}",
            f"change {n}",
        ]
        for f in range(3):
            text = "".join(rng.choices(alphabet, k=size.file_bytes))
            lines += [
                f"M 100644 inline codebundles/k8s-{n % 97}/file-{n}-{f}.robot",
                f"data {len(text)}",
                text,
            ]
        parts.append("\n".join(lines) + "\n")
        if n % 50 == 49:
            tag = f"v0.{n // 50}.0"
            parts.append(
                f"tag {tag}\nfrom :{n + 1}\ntagger Bench <b@example.invalid> {EPOCH} +0000\n"
                f"data {len(tag)}\n{tag}\n"
            )
    for branch, at in (("develop", size.commits), ("release", size.commits * 3 // 4)):
        parts.append(f"reset refs/heads/{branch}\nfrom :{at}\n")
    run(["git", "-C", str(path), "fast-import", "--quiet"], stdin="".join(parts))


def one_commit(path: Path, stamp: int) -> None:
    stream = (
        f"commit refs/heads/main\ncommitter Bench <bench@example.invalid> {EPOCH + 10**7 + stamp} +0000\n"
        f"data 10\none change\nfrom refs/heads/main^0\n"
        f"M 100644 inline CHANGELOG.md\ndata {len(f'release note {stamp}')}\nrelease note {stamp}\n"
    )
    run(["git", "-C", str(path), "fast-import", "--quiet"], stdin=stream)


def write_config(path: Path, upstream: Path, *, site: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    runtime = "  runtime_sync: false\n" if site else ""
    path.write_text(
        f"git:\n  enabled: true\n  data_dir: mirrors\n{runtime}"
        f"state:\n  path: state/state.sqlite3\n"
        f"sources:\n  - name: bench\n    type: static\n    codecollections:\n"
        f"      - slug: {SLUG}\n        git_url: {upstream.as_uri()}\n"
    )


def pack_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))


def bench(size: Size, work: Path) -> tuple[list[Row], dict[str, int]]:
    upstream = work / "upstream.git"
    make_upstream(upstream, size)
    connected, site = work / "connected" / "config.yaml", work / "site" / "config.yaml"
    write_config(connected, upstream, site=False)
    write_config(site, upstream, site=True)
    cccatalog("sync", "-c", str(connected))
    full = work / "full.tar"
    cccatalog("export", "--no-images", "-c", str(connected), "--out", str(full))
    cccatalog("import", str(full), "-c", str(site), "--allow-unsigned")
    facts = {"pack_bytes": pack_bytes(connected.parent / "mirrors" / f"{SLUG}.git")}

    update_bytes, import_s, bake_s, full_import_s = [], [], [], []
    for rep in range(size.reps):
        site_json = work / f"site-{rep}.json"
        cccatalog("manifest", "-c", str(site), "--out", str(site_json))
        one_commit(upstream, rep)
        cccatalog("sync", "-c", str(connected))
        update = work / f"update-{rep}.tar"
        cccatalog(
            "export", "--no-images", "-c", str(connected), "--since", str(site_json), "--out", str(update)
        )
        update_bytes.append(update.stat().st_size)
        import_s.append(cccatalog("import", str(update), "-c", str(site), "--allow-unsigned"))
        bake_s.append(cccatalog("bake", "-c", str(connected), "--dest", str(work / f"rebake-{rep}")))
        fresh = work / f"fresh-{rep}" / "config.yaml"
        write_config(fresh, upstream, site=True)
        cccatalog("export", "--no-images", "-c", str(connected), "--out", str(full))
        full_import_s.append(cccatalog("import", str(full), "-c", str(fresh), "--allow-unsigned"))
    full_bytes = full.stat().st_size
    upd, imp = statistics.median(update_bytes), statistics.median(import_s)
    bake, full_imp = statistics.median(bake_s), statistics.median(full_import_s)
    rows = [
        Row("full export (whole mirror)", full_bytes, None, 1.0, "full export"),
        Row("update: one new commit", int(upd), None, round(upd / full_bytes, 5), "full export"),
        Row("re-bake the mirrors", None, round(bake, 3), 1.0, "re-bake"),
        Row("import the one-commit update", None, round(imp, 3), round(imp / bake, 3), "re-bake"),
        Row("import a full export", None, round(full_imp, 3), round(full_imp / bake, 3), "re-bake"),
    ]
    facts["full_export_bytes"] = full_bytes
    return rows, facts


def print_report(rows: Sequence[Row], facts: dict[str, int]) -> None:
    print(
        f"mirror pack: {facts['pack_bytes'] / 1e6:.2f} MB; "
        f"full export: {facts['full_export_bytes'] / 1e6:.2f} MB"
    )
    print(f"{'what':<32} {'bytes':>12} {'seconds':>9} {'ratio':>10}  against")
    for r in rows:
        shown_bytes = f"{r.bytes:,}" if r.bytes is not None else ""
        shown_s = f"{r.seconds:.3f}" if r.seconds is not None else ""
        print(f"{r.what:<32} {shown_bytes:>12} {shown_s:>9} {r.ratio:>9.4f}x  {r.against}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke")
    parser.add_argument("--output", type=Path, help=f"JSON result [default for full: {RESULT.name}]")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    output: Path | None = args.output or (RESULT if args.size == "full" else None)
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        rows, facts = bench(size, Path(tmp))
    print_report(rows, facts)
    by_name = {r.what: r for r in rows}
    update_ratio = by_name["update: one new commit"].ratio
    result = {
        "benchmark": "transfer",
        "size": args.size,
        "parameters": asdict(size),
        "machine": machine({"ssh-keygen": ["ssh", "-V"]}),
        "facts": facts,
        "rows": [asdict(r) for r in rows],
        "targets": [
            {
                "name": "one-commit update vs full export < 1 %",
                "measured": update_ratio,
                "met": update_ratio < 0.01,
            },
        ],
    }
    if output is not None:
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
