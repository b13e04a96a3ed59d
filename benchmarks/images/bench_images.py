"""Benchmark cccatalog's image copy against `skopeo copy` in a loop and `skopeo sync`, and the size of
an update carrying one new build against carrying every image.

Debian `docker-registry` (distribution 2.8) processes on loopback: a source, and one destination per
tool (distribution stores a blob once for all its repositories, so on a shared one every tool after
the first would copy into storage that already holds the bytes). Per repetition the source gets N
CodeCollection images no destination has seen, each an index of two platforms (linux/amd64,
linux/arm64) whose manifests name a config, two base layers and a layer of its own (all three of one
size, incompressible), then N new builds on the same base layers. Each tool, in an order rotated from
one repetition to the next, mirrors:

- cold: the N first builds, into an empty repository of its registry;
- warm: the N new builds, most of whose blobs are there.

The tools, in the same run: cccatalog `oci.copy.copy_image` (in one process, one client per side, 4
blob workers per image), images one after another and 4 at once; `skopeo copy --all
--preserve-digests` once per image; `skopeo sync --all --preserve-digests` of all N from a YAML list.
Each run's digests are checked against the source's. Then the update size: the OCI image layout
`export` writes for N builds (a full export) against the one it writes `--since` a site holding them,
when one collection has a new build — both packed as `export` packs them (tar).

    python -m benchmarks.images.bench_images --size full
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script as well as with `python -m`
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine  # noqa: E402
from cccatalog.oci.client import RegistryClient  # noqa: E402
from cccatalog.oci.copy import RegistrySource, copy_between, copy_image  # noqa: E402
from cccatalog.oci.layout import LayoutTarget  # noqa: E402
from cccatalog.oci.reference import parse_reference  # noqa: E402
from tests.imagefixtures import Build, push_build  # noqa: E402
from tests.registry import ALL_MANIFESTS, RunningRegistry, registry_client, start_registry  # noqa: E402

RESULT = Path(__file__).with_name("results-full.json")
TOOLS = ("cccatalog", "cccatalog, 4 at once", "skopeo copy loop", "skopeo sync")
SKOPEO_TIMEOUT = 600


@dataclass(frozen=True)
class Size:
    images: int
    layer_bytes: int  # each layer: two base layers shared by a collection's builds, one of its own
    reps: int


SIZES = {
    "smoke": Size(images=3, layer_bytes=64_000, reps=1),
    "full": Size(images=12, layer_bytes=2_000_000, reps=3),
}


@dataclass
class Row:
    phase: str  # cold, warm
    tool: str
    seconds: float  # median over reps
    runs: list[float]
    vs_cccatalog: float  # this tool's time / cccatalog's (above 1: cccatalog is faster)


def skopeo(*args: str) -> None:
    done = subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=SKOPEO_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"skopeo {args[0]} failed: {done.stderr.strip()[-2000:]}")


def repo_name(i: int) -> str:
    return f"bench/cc-{i:03d}"


def push_builds(source: RunningRegistry, size: Size, generation: int, *, family: int = 0) -> list[Build]:
    """One build per collection; builds of one `family` share their base layers, no other do."""
    return [
        push_build(
            source,
            repo_name(i),
            f"main-{generation:07d}-{i:07d}",
            base=[f"os-{i}-{family}", f"python-{i}-{family}"],
            own=f"build-{i}-{generation}",
            size=size.layer_bytes,
        )
        for i in range(size.images)
    ]


def mirror_cccatalog(
    source: RunningRegistry, dest: RunningRegistry, prefix: str, builds: Sequence[Build], *, at_once: int = 1
) -> None:
    """`copy_image` per image, `at_once` images at a time, on one client per side."""
    with RegistryClient() as src, RegistryClient() as dst, ThreadPoolExecutor(max_workers=at_once) as pool:
        copies = [
            pool.submit(
                copy_image,
                src,
                parse_reference(f"{source.host}/{repo_name(i)}")[0],
                build.tag,
                dst,
                parse_reference(f"{dest.host}/{prefix}/{repo_name(i)}")[0],
                build.tag,
            )
            for i, build in enumerate(builds)
        ]
        for copy in copies:
            copy.result()


def mirror_skopeo_copy(
    source: RunningRegistry, dest: RunningRegistry, prefix: str, builds: Sequence[Build]
) -> None:
    for i, build in enumerate(builds):
        skopeo(
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "-q",
            f"docker://{source.host}/{repo_name(i)}:{build.tag}",
            f"docker://{dest.host}/{prefix}/{repo_name(i)}:{build.tag}",
        )


def mirror_skopeo_sync(
    source: RunningRegistry, dest: RunningRegistry, prefix: str, builds: Sequence[Build], work: Path
) -> None:
    listing = {
        source.host: {"tls-verify": False, "images": {repo_name(i): [b.tag] for i, b in enumerate(builds)}}
    }
    path = work / f"sync-{prefix}.yaml"
    path.write_text(yaml.safe_dump(listing))
    # without --scoped, an image lands at <dest>/<last path component>: cc-000, cc-001, ...
    skopeo(
        "sync",
        "--all",
        "--preserve-digests",
        "--src",
        "yaml",
        "--dest",
        "docker",
        "--dest-tls-verify=false",
        str(path),
        f"{dest.host}/{prefix}/bench",
    )


def check_digests(dest: RunningRegistry, prefix: str, builds: Sequence[Build]) -> None:
    with registry_client(dest) as client:
        for i, build in enumerate(builds):
            path = f"/v2/{prefix}/{repo_name(i)}/manifests/{build.tag}"
            found = client.head(path, headers={"Accept": ALL_MANIFESTS}).headers.get("Docker-Content-Digest")
            if found != build.digest:
                raise RuntimeError(f"{prefix}: {repo_name(i)}:{build.tag} is {found}, not {build.digest}")


def _mirror(
    tool: str,
    source: RunningRegistry,
    dest: RunningRegistry,
    *,
    prefix: str,
    builds: Sequence[Build],
    work: Path,
) -> None:
    if tool == "cccatalog":
        mirror_cccatalog(source, dest, prefix, builds)
    elif tool == "cccatalog, 4 at once":
        mirror_cccatalog(source, dest, prefix, builds, at_once=4)
    elif tool == "skopeo copy loop":
        mirror_skopeo_copy(source, dest, prefix, builds)
    else:
        mirror_skopeo_sync(source, dest, prefix, builds, work)


def bench_mirrors(size: Size, work: Path, source: RunningRegistry) -> list[Row]:
    """Each tool mirrors into a registry of its own (distribution stores a blob once for all its
    repositories: a shared one would make every tool after the first copy into storage that already
    holds the bytes), with builds no registry has seen for each repetition's cold phase, and the
    order of the tools rotated from one repetition to the next."""
    runs: dict[tuple[str, str], list[float]] = {}
    dests = {tool: start_registry(work / f"dest-{n}", "anonymous") for n, tool in enumerate(TOOLS)}
    try:
        for rep in range(size.reps):
            cold = push_builds(source, size, 2 * rep + 1, family=rep)
            warm = push_builds(source, size, 2 * rep + 2, family=rep)  # the same base layers, a new own
            order = TOOLS[rep % len(TOOLS) :] + TOOLS[: rep % len(TOOLS)]
            for tool in order:
                dest, prefix = dests[tool], f"r{rep}"
                for phase, builds in (("cold", cold), ("warm", warm)):
                    started = time.perf_counter()
                    _mirror(tool, source, dest, prefix=prefix, builds=builds, work=work)
                    seconds = time.perf_counter() - started
                    runs.setdefault((phase, tool), []).append(seconds)
                    check_digests(dest, prefix, builds)
    finally:
        for dest in dests.values():
            dest.stop()
    rows = []
    for phase in ("cold", "warm"):
        ours = statistics.median(runs[(phase, "cccatalog")])
        for tool in TOOLS:
            median = statistics.median(runs[(phase, tool)])
            rows.append(
                Row(
                    phase,
                    tool,
                    round(median, 4),
                    [round(s, 4) for s in runs[(phase, tool)]],
                    round(median / ours, 3),
                )
            )
    return rows


def layout_tar_bytes(root: Path) -> int:
    """The bytes the layout adds to an update: a PAX tar of its files, as `export` writes it."""
    out = root.with_suffix(".tar")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            tar.add(path, arcname=str(path.relative_to(root.parent)))
    return out.stat().st_size


def bench_update(size: Size, work: Path, source: RunningRegistry) -> dict[str, int]:
    """A full export's layout of N images against an update's, for one new build of one collection."""
    builds = push_builds(source, size, 9000, family=9000)
    full = work / "full" / "images"
    site_holds: set[str] = set()
    with RegistryClient() as client:
        for i, build in enumerate(builds):
            src = RegistrySource(client, parse_reference(f"{source.host}/{repo_name(i)}")[0])
            copy_between(src, build.tag, LayoutTarget(full), f"cc-{i}:{build.tag}")
            site_holds |= build.blobs | set(build.manifests) | {build.digest}
        new = push_build(
            source,
            repo_name(0),
            "main-9000001-0000000",
            base=["os-0-9000", "python-0-9000"],
            own="one-more",
            size=size.layer_bytes,
        )
        update = work / "update" / "images"
        target = LayoutTarget(update, present=site_holds)
        for i, build in enumerate(builds):  # every row again: all but one the site holds already
            tag = new.tag if i == 0 else build.tag
            src = RegistrySource(client, parse_reference(f"{source.host}/{repo_name(i)}")[0])
            copy_between(src, tag, target, f"cc-{i}:{tag}")
    return {"full_export_image_bytes": layout_tar_bytes(full), "update_image_bytes": layout_tar_bytes(update)}


def print_report(rows: Sequence[Row], sizes: dict[str, int], size: Size) -> None:
    per_image = 2 * 3 * size.layer_bytes
    print(f"{size.images} images, 2 platforms each, {per_image / 1e6:.2f} MB of layers per image")
    print(f"{'phase':<6} {'tool':<18} {'seconds':>9} {'x cccatalog':>12}")
    for r in rows:
        print(f"{r.phase:<6} {r.tool:<18} {r.seconds:>9.3f} {r.vs_cccatalog:>11.2f}x")
    full, update = sizes["full_export_image_bytes"], sizes["update_image_bytes"]
    print(
        f"images in a full export: {full:,} bytes; in an update with one new build: {update:,} bytes "
        f"({update / full:.2%})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke")
    parser.add_argument("--output", type=Path, help=f"JSON result [default for full: {RESULT.name}]")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    output: Path | None = args.output or (RESULT if args.size == "full" else None)
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        work = Path(tmp)
        source = start_registry(work / "source", "anonymous")
        try:
            rows = bench_mirrors(size, work, source)
            sizes = bench_update(size, work, source)
        finally:
            source.stop()
    print_report(rows, sizes, size)
    by = {(r.phase, r.tool): r for r in rows}
    ratio = sizes["update_image_bytes"] / sizes["full_export_image_bytes"]
    targets: list[dict[str, object]] = []
    for phase in ("cold", "warm"):
        loop = by[(phase, "skopeo copy loop")].vs_cccatalog
        targets.append(
            {
                "name": f"{phase}: cccatalog no slower than the skopeo copy loop",
                "measured": loop,
                "met": loop >= 1.0,
            }
        )
    targets.append(
        {
            "name": "update with one new build vs full export < 1/N of it",
            "measured": round(ratio, 5),
            "met": ratio < 1 / size.images,
        }
    )
    result = {
        "benchmark": "images",
        "size": args.size,
        "parameters": asdict(size),
        "machine": machine(
            {"skopeo": ["skopeo", "--version"], "docker-registry": ["docker-registry", "--version"]}
        ),
        "rows": [asdict(r) for r in rows],
        "sizes": sizes,
        "targets": targets,
    }
    if output is not None:
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
