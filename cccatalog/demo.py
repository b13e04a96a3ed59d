"""The embedded demo: a few local upstream CodeCollections and a config pointing at them.

`cccatalog demo` builds this, then runs the real sync on it, so a new user sees the product work with
nothing but git installed and no network at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cccatalog.gitmirror.git import Git


@dataclass(frozen=True, slots=True)
class DemoCollection:
    slug: str
    name: str
    tasks: tuple[str, ...]


DEMO_COLLECTIONS = (
    DemoCollection("demo-cli-codecollection", "Demo CLI CodeCollection", ("k8s-pod-health", "dns-latency")),
    DemoCollection(
        "demo-cloud-codecollection", "Demo Cloud CodeCollection", ("aws-cost-report", "azure-vm-audit")
    ),
    DemoCollection("demo-workspace-utils", "Demo Workspace Utilities", ("slack-notify",)),
)

_AUTHOR = {
    "user.name": "cccatalog demo",
    "user.email": "demo@cccatalog.invalid",
    "init.defaultBranch": "main",
    "commit.gpgSign": "false",
    "tag.gpgSign": "false",
}


def build_demo(root: Path, git: Git, *, public_base_url: str | None = None) -> Path:
    """Create upstream repos under `root/upstreams` (once), a static image-refs file per collection
    (what a registry would list for its builds), and `root/config.yaml`. Returns the config's path."""
    upstreams = root / "upstreams"
    for cc in DEMO_COLLECTIONS:
        repo = upstreams / cc.slug
        if not (repo / ".git").is_dir():
            _make_upstream(repo, cc, git)
        _write_refs(root / "refs" / f"{cc.slug}.json", repo, git)
    config = root / "config.yaml"
    config.write_text(_config_text(upstreams, public_base_url), encoding="utf-8")
    return config


def _write_refs(path: Path, repo: Path, git: Git) -> None:
    """Two builds of main (the newer one wins by build time, not by tag) and one per release tag."""

    def sha(rev: str) -> str:
        return git.run(["-C", str(repo), "rev-parse", "--short=7", rev], timeout=30).stdout.strip()

    runtime = "6e4bc81"
    tags = git.run(["-C", str(repo), "tag", "--list", "v*"], timeout=30).stdout.split()
    refs = [
        {"ref": "main", "image_tag": f"main-{sha('main~1')}-{runtime}", "built_at": "2026-01-05T10:00:00Z"},
        {"ref": "main", "image_tag": f"main-{sha('main')}-{runtime}", "built_at": "2026-01-06T10:00:00Z"},
    ] + [
        {"ref": tag, "image_tag": f"{tag}-{sha(tag)}-{runtime}", "built_at": f"2026-01-0{i + 1}T09:00:00Z"}
        for i, tag in enumerate(tags)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"default_ref": "main", "refs": refs}, indent=2) + "\n", encoding="utf-8")


def _make_upstream(repo: Path, cc: DemoCollection, git: Git) -> None:
    repo.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        git.run(["-C", str(repo), *args], config=_AUTHOR, timeout=60)

    run("init", "--quiet")
    (repo / "README.md").write_text(f"# {cc.name}\n\nA demo CodeCollection served by cccatalog.\n")
    run("add", "README.md")
    run("commit", "--quiet", "-m", "Start the collection")
    for i, task in enumerate(cc.tasks):
        task_dir = repo / "codebundles" / task
        task_dir.mkdir(parents=True, exist_ok=True)
        (task_dir / "runbook.robot").write_text(f"*** Tasks ***\n{task}\n    Log    checking {task}\n")
        run("add", "codebundles")
        run("commit", "--quiet", "-m", f"Add {task}")
        run("tag", "-a", f"v1.{i}.0", "-m", f"Release v1.{i}.0")
    run("switch", "--quiet", "-c", "feature/next")
    (repo / "NEXT.md").write_text("Work in progress.\n")
    run("add", "NEXT.md")
    run("commit", "--quiet", "-m", "Start the next release")
    run("switch", "--quiet", "main")


def _config_text(upstreams: Path, public_base_url: str | None) -> str:
    entries = "".join(
        f"      - slug: {cc.slug}\n"
        f"        name: {cc.name}\n"
        f"        git_url: {(upstreams / cc.slug).resolve().as_uri()}\n"
        f"        image_registry: localhost:5000/demo/{cc.slug}\n"
        f"        static_path: refs/{cc.slug}.json\n"
        for cc in DEMO_COLLECTIONS
    )
    base = f"  public_base_url: {public_base_url}\n" if public_base_url else ""
    return (
        "# Written by `cccatalog demo`: local upstreams, mirrored under ./mirrors.\n"
        "git:\n"
        "  enabled: true\n"
        "  data_dir: mirrors\n" + base + "state:\n"
        "  path: state.sqlite3\n"
        "sources:\n"
        "  - name: demo\n"
        "    type: static\n"
        "    codecollections:\n" + entries
    )
