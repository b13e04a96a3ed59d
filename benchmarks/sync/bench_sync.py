"""Benchmark `cccatalog sync` against a shell loop of `git fetch --prune` over plain `git clone --mirror`s.

REPOS small local upstreams (file:// URLs, generated with `git fast-import`) are mirrored four times
over, one mirror set per contender, so every contender sees exactly the same upstream changes:

- `cccatalog sync --no-images -j1` and `-j4` (each with its own data_dir and state file);
- what users without cccatalog run, "plain git": a shell loop of `git clone --mirror` (first clone), then
  `for r in *.git; do git -C $r fetch --prune; done`; and the same through `xargs -P4`, the parallel
  counterpart of `-j4`.

Measured: the first clone, a no-op run (nothing changed upstream), and a run after one new commit in
CHANGED of the upstreams. Each contender's mirrors are checked against the upstreams after every run.
Where `strace` is installed, one more (untimed) no-op and changed run of each contender counts the
processes git needs per repo.

    python -m benchmarks.sync.bench_sync --size full
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "LC_ALL": "C",
}
EPOCH = 1_735_689_600  # 2025-01-01, so generated repos are byte-identical from run to run
TIMEOUT = 600
STRACE = shutil.which("strace")


@dataclass(frozen=True)
class Size:
    repos: int
    changed: int
    commits: int  # per upstream
    reps: int


SIZES = {
    "smoke": Size(repos=8, changed=2, commits=20, reps=1),
    "full": Size(repos=50, changed=10, commits=40, reps=5),
}


@dataclass
class Processes:
    scenario: str
    contender: str
    total: int  # git processes (and the shells git starts helpers with) in one run over all repos
    per_repo: float


@dataclass
class Row:
    scenario: str  # first clone, no-op, 10 changed
    contender: str
    seconds: float  # median wall time
    runs: int
    vs_loop: float  # shell loop seconds / these seconds: > 1 means faster than the loop
    vs_parallel_loop: float


def env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def run(
    argv: Sequence[str],
    *,
    stdin: str | None = None,
    cwd: Path | None = None,
    environ: dict[str, str] | None = None,
) -> str:
    result = subprocess.run(
        list(argv),
        input=stdin,
        cwd=cwd,
        env=environ or env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


# --- upstreams -----------------------------------------------------------------------------------------


def _commit(ref: str, n: int, message: str, files: dict[str, str], parent: str | None) -> str:
    """A fast-import commit with mark `:n+1` (so later commands can name it)."""
    when = EPOCH + n * 3600
    lines = [f"commit {ref}", f"mark :{n + 1}", f"committer Bench <bench@example.invalid> {when} +0000"]
    lines += [f"data {len(message.encode())}", message]
    if parent:
        lines.append(f"from {parent}")
    for path, content in files.items():
        lines += [f"M 100644 inline {path}", f"data {len(content.encode())}", content]
    return "\n".join(lines) + "\n"


def make_upstream(path: Path, index: int, commits: int) -> None:
    """A bare repo: `commits` commits on main, a develop branch and three annotated tags."""
    run(["git", "init", "-q", "--bare", "-b", "main", str(path)])
    parts = []
    for n in range(commits):
        content = "".join(f"repo {index} commit {n} line {i}\n" for i in range(40))
        files = {f"codebundles/bundle{n % 7}/runbook.robot": content, "README.md": f"# repo {index} v{n}\n"}
        parts.append(_commit("refs/heads/main", n, f"change {n}", files, None))
    parts.append(f"reset refs/heads/develop\nfrom :{commits - commits // 4}\n")
    for t in range(3):
        tag = f"v1.{t}.0"
        parts.append(
            f"tag {tag}\nfrom :{commits // 2 + t * 3}\n"
            f"tagger Bench <bench@example.invalid> {EPOCH} +0000\ndata {len(tag)}\n{tag}\n"
        )
    run(["git", "-C", str(path), "fast-import", "--quiet"], stdin="".join(parts))


def commit_upstream(path: Path, stamp: int) -> str:
    """One new commit on main (continuing from its tip); returns its sha."""
    files = {"CHANGES": f"change {stamp}\n"}
    stream = _commit(
        "refs/heads/main", 10_000 + stamp, f"upstream change {stamp}", files, "refs/heads/main^0"
    )
    run(["git", "-C", str(path), "fast-import", "--quiet"], stdin=stream)
    return main_sha(path)


def main_sha(repo: Path) -> str:
    return run(["git", "--git-dir", str(repo), "rev-parse", "refs/heads/main"]).strip()


# --- contenders ----------------------------------------------------------------------------------------


def cccatalog_argv() -> list[str]:
    return [sys.executable, "-m", "cccatalog"]


def cccatalog_env(work: Path) -> dict[str, str]:
    """This tree's cccatalog (not whatever is installed), with its bytecode cached in `work` as an
    installed package has it: a run that compiles every module measures the compiler instead."""
    environ = env()
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return environ


def warm_bytecode(work: Path) -> None:
    modules = "cccatalog.cli, cccatalog.jobs, cccatalog.catalog.store, cccatalog.gitmirror.sync"
    run([sys.executable, "-c", f"import {modules}"], environ=cccatalog_env(work))


@dataclass(frozen=True)
class Contender:
    name: str
    mirrors: Path  # <mirrors>/<slug>.git
    sync: Callable[[Sequence[str]], None]  # the argument prefixes the command (strace), usually ()


def write_config(path: Path, data_dir: Path, upstreams: Sequence[Path]) -> None:
    entries = "".join(f"      - slug: {u.stem}\n        git_url: {u.as_uri()}\n" for u in upstreams)
    path.write_text(
        "git:\n  enabled: true\n"
        f"  data_dir: {data_dir}\n"
        "sources:\n  - name: bench\n    type: static\n    codecollections:\n" + entries
    )


def cccatalog_contender(work: Path, upstreams: Sequence[Path], jobs: int) -> Contender:
    data_dir = work / f"cccatalog-j{jobs}"
    config = work / f"config-j{jobs}.yaml"
    write_config(config, data_dir, upstreams)

    def sync(wrap: Sequence[str]) -> None:
        argv = [*cccatalog_argv(), "sync", "-c", str(config), "-j", str(jobs), "--no-images", "--json"]
        out = run([*wrap, *argv], environ=cccatalog_env(work))
        summary = json.loads(out)
        if not summary["ok"]:
            raise RuntimeError(f"cccatalog sync -j{jobs} failed: {summary['counts']}")

    return Contender(f"cccatalog sync -j{jobs}", data_dir, sync)


def loop_contender(work: Path, upstreams: Sequence[Path], *, parallel: bool) -> Contender:
    mirrors = work / ("plain-xargs" if parallel else "plain-loop")
    mirrors.mkdir()
    clone = "git clone --quiet --mirror"
    fetch = "git -C {} fetch --quiet --prune"
    first = True

    def sync(wrap: Sequence[str]) -> None:
        nonlocal first
        if first:  # the first clone, the same way: a loop of `git clone --mirror`
            pairs = "".join(f"{u.as_uri()} {mirrors / u.stem}.git\n" for u in upstreams)
            if parallel:
                run([*wrap, "bash", "-c", f"xargs -P4 -L1 {clone}"], stdin=pairs)
            else:
                run(
                    [*wrap, "bash", "-c", f"while read -r url dir; do {clone} $url $dir || exit 1; done"],
                    stdin=pairs,
                )
            first = False
        elif parallel:
            run([*wrap, "bash", "-c", f"ls -d {mirrors}/*.git | xargs -P4 -I{{}} {fetch}"])
        else:
            run([*wrap, "bash", "-c", f"for r in {mirrors}/*.git; do {fetch.format('$r')} || exit 1; done"])

    name = "xargs -P4 of plain git" if parallel else "shell loop of plain git"
    return Contender(name, mirrors, sync)


# --- measuring -----------------------------------------------------------------------------------------


def check(contender: Contender, upstreams: Sequence[Path], expected: dict[str, str]) -> None:
    for upstream in upstreams:
        got = main_sha(contender.mirrors / f"{upstream.stem}.git")
        if got != expected[upstream.stem]:
            raise RuntimeError(
                f"{contender.name}: {upstream.stem} is at {got}, upstream at {expected[upstream.stem]}"
            )


def bench(size: Size, work: Path) -> tuple[list[Row], list[Processes]]:
    upstream_dir = work / "upstreams"
    upstreams = [upstream_dir / f"cc{i:02d}" for i in range(size.repos)]
    for i, path in enumerate(upstreams):
        make_upstream(path, i, size.commits)
    expected = {u.stem: main_sha(u) for u in upstreams}
    contenders = [
        cccatalog_contender(work, upstreams, 1),
        cccatalog_contender(work, upstreams, 4),
        loop_contender(work, upstreams, parallel=False),
        loop_contender(work, upstreams, parallel=True),
    ]
    times: dict[tuple[str, str], list[float]] = {}
    warm_bytecode(work)

    def timed(scenario: str, contender: Contender) -> None:
        started = time.perf_counter()
        contender.sync(())
        times.setdefault((scenario, contender.name), []).append(time.perf_counter() - started)
        check(contender, upstreams, expected)

    for contender in contenders:
        timed("first clone", contender)
    changed_label = f"{size.changed} of {size.repos} changed"
    stamp = 0
    for rep in range(size.reps):
        order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
        for contender in order:
            timed("no-op", contender)
        for contender in order:  # each contender meets the same kind of change: one commit in `changed` repos
            for k in range(size.changed):
                upstream = upstreams[(rep * size.changed + k) % size.repos]
                stamp += 1
                expected[upstream.stem] = commit_upstream(upstream, stamp)
            timed(changed_label, contender)
        for contender in contenders:  # the others caught up on the changes they did not time: untimed
            contender.sync(())
            check(contender, upstreams, expected)

    processes = (
        count_processes(contenders, upstreams, expected, size=size, work=work, stamp=stamp) if STRACE else []
    )

    rows = []
    for scenario in ("first clone", "no-op", changed_label):
        loop = statistics.median(times[(scenario, contenders[2].name)])
        parallel = statistics.median(times[(scenario, contenders[3].name)])
        for contender in contenders:
            values = times[(scenario, contender.name)]
            seconds = statistics.median(values)
            rows.append(
                Row(
                    scenario,
                    contender.name,
                    round(seconds, 4),
                    len(values),
                    round(loop / seconds, 2),
                    round(parallel / seconds, 2),
                )
            )
    return rows, processes


def count_processes(
    contenders: Sequence[Contender],
    upstreams: Sequence[Path],
    expected: dict[str, str],
    *,
    size: Size,
    work: Path,
    stamp: int,
) -> list[Processes]:
    """One more changed run (the first `changed` upstreams) and no-op run of every contender under
    strace, untimed: strace slows every process it follows."""
    for k, upstream in enumerate(upstreams[: size.changed]):
        expected[upstream.stem] = commit_upstream(upstream, stamp + 1 + k)
    trace = work / "trace.txt"
    strace = [
        STRACE or "strace",
        "-f",
        "-qq",
        "-z",
        "-e",
        "trace=execve",
        "-e",
        "signal=none",
        "-o",
        str(trace),
    ]
    processes = []
    for scenario in (f"{size.changed} of {size.repos} changed", "no-op"):  # the same changes, then none
        for contender in contenders:
            contender.sync(strace)
            check(contender, upstreams, expected)
            count = git_processes(trace.read_text(errors="replace"))
            processes.append(Processes(scenario, contender.name, count, round(count / len(upstreams), 2)))
    return processes


def git_processes(trace: str) -> int:
    """Processes started for git in an `strace -z -e trace=execve` log: git, its helpers
    (`/usr/lib/git-core/git-upload-pack` ...) and the shell git runs `git-upload-pack` with."""
    count = 0
    for line in trace.splitlines():
        match = re.search(r'execve\("([^"]*)", \[(.*)', line)
        if not match:
            continue
        name = match.group(1).rsplit("/", 1)[-1]
        if name.startswith("git") or (name in ("sh", "dash") and '"-c", "git-' in match.group(2)):
            count += 1
    return count


# --- reporting -----------------------------------------------------------------------------------------


def print_report(rows: Sequence[Row], processes: Sequence[Processes]) -> None:
    header = (
        f"{'scenario':<16} {'contender':<30} {'seconds':>9} {'runs':>5} {'x vs loop':>10} {'x vs xargs':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.scenario:<16} {r.contender:<30} {r.seconds:>9.3f} {r.runs:>5} "
            f"{r.vs_loop:>9.2f}x {r.vs_parallel_loop:>10.2f}x"
        )
    if processes:
        print(f"\n{'scenario':<16} {'contender':<30} {'git processes':>14} {'per repo':>9}")
        for c in processes:
            print(f"{c.scenario:<16} {c.contender:<30} {c.total:>14} {c.per_repo:>9.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke")
    parser.add_argument("--output", type=Path, help=f"JSON result [default for full: {RESULT.name}]")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    output: Path | None = args.output or (RESULT if args.size == "full" else None)
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        rows, processes = bench(size, Path(tmp))
    print_report(rows, processes)
    result = {
        "benchmark": "sync",
        "size": args.size,
        "parameters": asdict(size),
        "machine": machine(),
        "rows": [asdict(r) for r in rows],
        "processes": [asdict(c) for c in processes],  # empty without strace
    }
    if output is not None:
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
