"""Benchmark mirror maintenance: server CPU per full clone from a mirror kept by `cccatalog sync` vs the
same upstream kept as a plain `git clone --mirror` (the predecessor's way).

A deterministic upstream is generated with `git fast-import` (thousands of commits, text files edited a
few lines at a time, some binary assets, feature branches, annotated tags and GitHub-style
`refs/pull/*`), repacked like a hosting service keeps it, and revealed in STAGES steps: the mirrors are
first made at 70 % of the history and then follow it, as a mirror in service does. Mirrors compared:

- `git clone --mirror`, made fresh at the final state (the most favourable case for the predecessor);
- `git clone --mirror` + one `git fetch --prune` per step (what the predecessor's mirror looks like);
- `cccatalog sync`, first sync + one sync per step;
- the aged predecessor mirror after one `cccatalog sync` adopted it.

Each mirror then serves REPS full clones (`git clone --bare --no-local file://...`, protocol v2); the
server side (`git upload-pack` and the `pack-objects` it runs) is measured by `/usr/bin/time` wrapped
around it through `--upload-pack`: user + system CPU seconds and peak RSS.

    python -m benchmarks.maintenance.bench_maintenance --size full
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script as well as with `python -m`
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine  # noqa: E402

RESULT = Path(__file__).with_name("results-full.json")
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C"}
EPOCH = 1_600_000_000
TIMEOUT = 1800
TARGET = 0.3
FIRST_STAGE = 0.7  # the mirrors are made when this share of the history exists


@dataclass(frozen=True)
class Size:
    commits: int
    files: int  # text files at the start
    assets: int  # binary files
    branches: int
    tags: int
    pulls: int  # refs/pull/N/head
    stages: int  # fetches/syncs after the first clone
    reps: int  # clones measured per mirror


SIZES = {
    "smoke": Size(commits=300, files=60, assets=3, branches=3, tags=3, pulls=20, stages=2, reps=1),
    "full": Size(commits=6000, files=1500, assets=60, branches=20, tags=60, pulls=600, stages=20, reps=5),
}


def env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def run(argv: Sequence[str], *, stdin: bytes | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        list(argv), input=stdin, cwd=cwd, env=env(), capture_output=True, timeout=TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({result.returncode}): {result.stderr[-2000:]!r}")
    return result.stdout.decode()


# --- the upstream --------------------------------------------------------------------------------------


@dataclass
class History:
    """What fast-import made: the mainline commits (by mark) and when every other ref was born."""

    mainline: list[int] = field(default_factory=list)  # marks, oldest first
    births: dict[str, int] = field(default_factory=dict)  # ref -> mainline index it appeared at


class StreamWriter:
    """Writes a fast-import stream of a plausible project history, deterministically."""

    def __init__(self, size: Size, seed: int = 42) -> None:
        self.size = size
        self.rng = random.Random(seed)  # noqa: S311 - deterministic test data, not crypto
        self.vocabulary = [self._word() for _ in range(3000)]
        self.files: dict[str, list[str]] = {}
        self.marks = 0
        self.chunks: list[bytes] = []
        self.history = History()

    def _word(self) -> str:
        return "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(self.rng.randint(2, 10)))

    def _line(self) -> str:
        indent = "    " * self.rng.randint(0, 3)
        return indent + " ".join(self.rng.choices(self.vocabulary, k=self.rng.randint(3, 12))) + "\n"

    def _text(self) -> list[str]:
        return [self._line() for _ in range(self.rng.randint(20, 300))]

    def _data(self, payload: bytes) -> None:
        self.chunks.append(b"data %d\n" % len(payload))
        self.chunks.append(payload + b"\n")

    def _commit(
        self, ref: str, index: int, message: str, changes: dict[str, bytes], parent: int | None
    ) -> int:
        self.marks += 1
        author = f"Dev{self.rng.randint(1, 40)} <dev@example.invalid> {EPOCH + index * 900} +0000"
        self.chunks.append(
            f"commit {ref}\nmark :{self.marks}\nauthor {author}\ncommitter {author}\n".encode()
        )
        self._data(message.encode())
        if parent is not None:
            self.chunks.append(f"from :{parent}\n".encode())
        for path, content in changes.items():
            self.chunks.append(f"M 100644 inline {path}\n".encode())
            self._data(content)
        return self.marks

    def _edit(self, path: str) -> bytes:
        lines = self.files[path]
        for _ in range(self.rng.randint(1, 5)):
            lines[self.rng.randrange(len(lines))] = self._line()
        for _ in range(self.rng.randint(0, 3)):
            lines.insert(self.rng.randrange(len(lines) + 1), self._line())
        return "".join(lines).encode()

    def _asset(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(40_000, 250_000))

    def write(self) -> tuple[bytes, History]:
        size, rng = self.size, self.rng
        for i in range(size.files):
            self.files[f"codebundles/bundle{i % 60:02d}/file{i:04d}.robot"] = self._text()
        initial: dict[str, bytes] = {p: "".join(ls).encode() for p, ls in self.files.items()}
        initial.update({f"docs/assets/image{a:03d}.png": self._asset() for a in range(size.assets)})
        self.history.mainline.append(self._commit("refs/heads/main", 0, "initial import", initial, None))
        branch_at = {
            int(size.commits * (i + 1) / (size.branches + 1)): f"feature-{i}" for i in range(size.branches)
        }
        tag_at = {
            int(size.commits * (i + 1) / (size.tags + 1)): f"v{i // 10}.{i % 10}.0" for i in range(size.tags)
        }
        pull_at = {int(size.commits * (i + 0.5) / size.pulls): i + 1 for i in range(size.pulls)}
        for n in range(1, size.commits):
            changes = {path: self._edit(path) for path in rng.sample(sorted(self.files), rng.randint(1, 4))}
            if n % 40 == 0:
                path = f"codebundles/bundle{rng.randrange(60):02d}/new{n:05d}.robot"
                self.files[path] = self._text()
                changes[path] = "".join(self.files[path]).encode()
            if size.assets and n % 150 == 0:
                changes[f"docs/assets/image{rng.randrange(size.assets):03d}.png"] = self._asset()
            mark = self._commit("refs/heads/main", n, f"change {n}", changes, None)
            self.history.mainline.append(mark)
            if n in branch_at:
                self._side(f"refs/heads/{branch_at[n]}", n, mark, commits=3)
            if n in pull_at:
                self._side(f"refs/pull/{pull_at[n]}/head", n, mark, commits=2)
            if n in tag_at:
                tag = tag_at[n]
                tagger = f"Rel <rel@example.invalid> {EPOCH + n * 900} +0000"
                self.chunks.append(f"tag {tag}\nfrom :{mark}\ntagger {tagger}\n".encode())
                self._data(f"release {tag}".encode())
                self.history.births[f"refs/tags/{tag}"] = n
        return b"".join(self.chunks), self.history

    def _side(self, ref: str, n: int, parent: int, *, commits: int) -> None:
        """A few commits off the mainline; file contents are copies, so the mainline is not disturbed."""
        saved = {p: list(ls) for p, ls in self.files.items()}
        for k in range(commits):
            path = self.rng.choice(sorted(self.files))
            parent = self._commit(ref, n, f"{ref} work {k}", {path: self._edit(path)}, parent)
        self.files = saved
        self.history.births[ref] = n


def make_upstream(path: Path, size: Size) -> tuple[History, dict[int, str], dict[str, str]]:
    """The upstream repo with every ref; returns the history, marks -> sha, and the final refs."""
    run(["git", "init", "-q", "--bare", "-b", "main", str(path)])
    stream, history = StreamWriter(size).write()
    marks = path / "marks"
    run(["git", "-C", str(path), "fast-import", "--quiet", f"--export-marks={marks}"], stdin=stream)
    mark_sha = {int(m[1:]): sha for m, sha in (ln.split() for ln in marks.read_text().splitlines())}
    marks.unlink()
    # Kept like a hosting service keeps it: one well-deltified pack (as GitHub's, without a bitmap).
    run(["git", "-C", str(path), "repack", "-a", "-d", "-f", "-q", "--window=50", "--depth=50"])
    out = run(["git", "-C", str(path), "for-each-ref", "--format=%(objectname) %(refname)"])
    refs = {name: sha for sha, name in (ln.split(" ", 1) for ln in out.splitlines())}
    return history, mark_sha, refs


def set_stage(
    path: Path, history: History, mark_sha: dict[int, str], refs: dict[str, str], index: int
) -> None:
    """Show the upstream as it was when mainline commit `index` was the newest."""
    lines = [f"update refs/heads/main {mark_sha[history.mainline[index]]}\n"]
    for name, sha in refs.items():
        if name == "refs/heads/main":
            continue
        born = history.births.get(name, 0)
        lines.append(f"update {name} {sha}\n" if born <= index else f"delete {name}\n")
    run(["git", "-C", str(path), "update-ref", "--stdin"], stdin="".join(lines).encode())


def stage_indexes(size: Size) -> list[int]:
    last = size.commits - 1
    first = int(last * FIRST_STAGE)
    return [first + (last - first) * s // size.stages for s in range(size.stages + 1)]


# --- the mirrors ---------------------------------------------------------------------------------------


def cccatalog_argv() -> list[str]:
    script = Path(sys.executable).with_name("cccatalog")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cccatalog"]


def cccatalog_sync(config: Path) -> None:
    out = run([*cccatalog_argv(), "sync", "-c", str(config), "--no-images", "--json"])
    if not json.loads(out)["ok"]:
        raise RuntimeError(f"cccatalog sync failed: {out[-2000:]}")


def write_config(path: Path, data_dir: Path, slug: str, upstream: Path) -> None:
    path.write_text(
        f"git:\n  enabled: true\n  data_dir: {data_dir}\n"
        "sources:\n  - name: bench\n    type: static\n    codecollections:\n"
        f"      - slug: {slug}\n        git_url: {upstream.as_uri()}\n"
    )


@dataclass
class MirrorStats:
    packs: int
    loose_objects: int
    size_mib: float
    bitmap: bool
    commit_graph: bool
    refs: int


def stats(repo: Path) -> MirrorStats:
    counts = dict(
        line.split(": ", 1) for line in run(["git", "-C", str(repo), "count-objects", "-v"]).splitlines()
    )
    pack_dir = repo / "objects" / "pack"
    refs = run(["git", "-C", str(repo), "for-each-ref", "--format=%(refname)"]).splitlines()
    return MirrorStats(
        packs=int(counts["packs"]),
        loose_objects=int(counts["count"]),
        size_mib=round((int(counts["size-pack"]) + int(counts["size"])) / 1024, 1),
        bitmap=any(pack_dir.glob("*.bitmap")),
        commit_graph=(repo / "objects" / "info" / "commit-graph").exists()
        or (repo / "objects" / "info" / "commit-graphs").is_dir(),
        refs=len(refs),
    )


def build_mirrors(size: Size, work: Path) -> dict[str, Path]:
    upstream = work / "upstream.git"
    started = time.perf_counter()
    history, mark_sha, refs = make_upstream(upstream, size)
    print(f"upstream generated in {time.perf_counter() - started:.1f}s: {stats(upstream)}", file=sys.stderr)
    stages = stage_indexes(size)
    aged = work / "predecessor-aged" / "cc.git"
    ccc_dir = work / "cccatalog"
    config = work / "cccatalog.yaml"
    write_config(config, ccc_dir, "cc", upstream)
    for k, index in enumerate(stages):
        set_stage(upstream, history, mark_sha, refs, index)
        if k == 0:
            aged.parent.mkdir()
            run(["git", "clone", "--quiet", "--mirror", upstream.as_uri(), str(aged)])
        else:
            run(["git", "-C", str(aged), "fetch", "--quiet", "--prune"])
        cccatalog_sync(config)
    fresh = work / "predecessor-fresh" / "cc.git"
    run(["git", "clone", "--quiet", "--mirror", upstream.as_uri(), str(fresh)])
    gced = work / "predecessor-gc" / "cc.git"
    shutil.copytree(aged, gced, symlinks=True)
    run(["git", "-C", str(gced), "gc", "--quiet"])  # what auto-gc does now and then (bare: with a bitmap)
    adopted_dir = work / "adopted"
    shutil.copytree(aged.parent, adopted_dir, symlinks=True)
    adopted_config = work / "adopted.yaml"
    write_config(adopted_config, adopted_dir, "cc", upstream)
    cccatalog_sync(adopted_config)
    return {
        "git clone --mirror (fresh)": fresh,
        f"git clone --mirror + {size.stages} fetches": aged,
        f"git clone --mirror + {size.stages} fetches + git gc": gced,
        f"cccatalog sync (first + {size.stages} syncs)": ccc_dir / "cc.git",
        "predecessor mirror adopted by cccatalog": adopted_dir / "cc.git",
    }


# --- measuring clones ----------------------------------------------------------------------------------


@dataclass
class Clone:
    cpu_s: float
    wall_s: float
    max_rss_mib: float
    pack_mib: float


# Runs `git upload-pack` for the client and writes the rusage of it and the pack-objects it waited for
# (wait4: microsecond resolution, where /usr/bin/time rounds to 10 ms).
UPLOAD_PACK_WRAPPER = """import os, subprocess, sys
child = subprocess.Popen(["git", "upload-pack", *sys.argv[1:]])
_, status, usage = os.wait4(child.pid, 0)
with open(os.environ["BENCH_RUSAGE_OUT"], "w") as out:
    out.write(f"{usage.ru_utime} {usage.ru_stime} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def clone_once(mirror: Path, work: Path) -> Clone:
    """One full clone; the server side's CPU is measured around `git upload-pack` by a wrapper."""
    report = work / "rusage.out"
    script = work / "upload_pack_wrapper.py"
    script.write_text(UPLOAD_PACK_WRAPPER)
    wrapper = work / "upload-pack.sh"
    wrapper.write_text(f'#!/bin/sh\nBENCH_RUSAGE_OUT={report} exec {sys.executable} -S -E {script} "$@"\n')
    wrapper.chmod(0o755)
    dest = work / "clone.git"
    argv = ["git", "clone", "--quiet", "--bare", "--no-local", f"--upload-pack={wrapper}"]
    started = time.perf_counter()
    run([*argv, mirror.as_uri(), str(dest)])
    wall = time.perf_counter() - started
    user, system, rss_kib = report.read_text().split()
    pack = sum(p.stat().st_size for p in (dest / "objects" / "pack").glob("*.pack"))
    shutil.rmtree(dest)
    report.unlink()
    return Clone(float(user) + float(system), wall, int(rss_kib) / 1024, pack / 2**20)


@dataclass
class Row:
    mirror: str
    server_cpu_s: float  # median over reps
    cpu_ratio: float  # vs the fresh `git clone --mirror`
    clone_wall_s: float
    server_max_rss_mib: float
    pack_mib: float
    stats: MirrorStats
    cpu_samples: list[float]


def measure(mirrors: dict[str, Path], reps: int, work: Path) -> list[Row]:
    samples: dict[str, list[Clone]] = {name: [] for name in mirrors}
    for path in mirrors.values():  # warm the page cache for all alike
        clone_once(path, work)
    for _ in range(reps):
        for name, path in mirrors.items():
            samples[name].append(clone_once(path, work))
    baseline = statistics.median(c.cpu_s for c in samples["git clone --mirror (fresh)"])
    rows = []
    for name, clones in samples.items():
        cpu = statistics.median(c.cpu_s for c in clones)
        rows.append(
            Row(
                mirror=name,
                server_cpu_s=round(cpu, 3),
                cpu_ratio=round(cpu / baseline, 3) if baseline else 0.0,
                clone_wall_s=round(statistics.median(c.wall_s for c in clones), 3),
                server_max_rss_mib=round(max(c.max_rss_mib for c in clones), 1),
                pack_mib=round(statistics.median(c.pack_mib for c in clones), 1),
                stats=stats(mirrors[name]),
                cpu_samples=[round(c.cpu_s, 3) for c in clones],
            )
        )
    return rows


# --- reporting -----------------------------------------------------------------------------------------


def print_report(rows: Sequence[Row]) -> None:
    header = (
        f"{'mirror':<42} {'server CPU s':>12} {'ratio':>6} {'clone s':>8} {'RSS MiB':>8} "
        f"{'packs':>5} {'loose':>6} {'bitmap':>6} {'refs':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.mirror:<42} {r.server_cpu_s:>12.3f} {r.cpu_ratio:>5.2f}x {r.clone_wall_s:>8.3f} "
            f"{r.server_max_rss_mib:>8.1f} {r.stats.packs:>5} {r.stats.loose_objects:>6} "
            f"{'yes' if r.stats.bitmap else 'no':>6} {r.stats.refs:>5}"
        )


@contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="bench-maintenance-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke")
    parser.add_argument("--output", type=Path, help=f"JSON result [default for full: {RESULT.name}]")
    parser.add_argument("--keep", type=Path, help="build in this directory and keep it (for profiling)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    output: Path | None = args.output or (RESULT if args.size == "full" else None)
    with workdir(args.keep) as work:
        rows = measure(build_mirrors(size, work), size.reps, work)
    print_report(rows)
    ccc = next(r for r in rows if r.mirror.startswith("cccatalog sync"))
    met = ccc.cpu_ratio <= TARGET
    print(
        f"\n{'MET ' if met else 'MISS'} server CPU per full clone, cccatalog vs fresh clone --mirror: "
        f"{ccc.cpu_ratio:.2f}x (target <= {TARGET}x)"
    )
    result = {
        "benchmark": "mirror-maintenance",
        "size": args.size,
        "parameters": asdict(size),
        "machine": machine(),
        "rows": [asdict(r) for r in rows],
        "targets": [
            {
                "name": "server CPU per full clone vs fresh clone --mirror",
                "wanted": f"<= {TARGET}x",
                "value": f"{ccc.cpu_ratio}x",
                "met": met,
            }
        ],
    }
    if output is not None:
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {output}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
