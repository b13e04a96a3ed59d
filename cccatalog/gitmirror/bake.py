"""`cccatalog bake`: mirrors for a release image, through the same sync code, plus a manifest.

The manifest (`<dest>/manifest.json`, written atomically) lists per repo the slug, the upstream URL
without credentials, default branch, head commit, every ref and a fingerprint of them, and the pack
size; `serve` checks the baked repos against it at start-up. Baked repos are made readable by any
uid, since the runtime image may run under an arbitrary one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cccatalog import __version__
from cccatalog.config import AuthConfig, Config
from cccatalog.errors import UsageError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import Mirror, fingerprint
from cccatalog.gitmirror.sync import MirrorSyncer, RepoResult, SyncOptions, plan_sync
from cccatalog.paths import require_writable_dir

MANIFEST = "manifest.json"
_TOKEN_FROM_FILE = "CCCATALOG_BAKE_TOKEN"  # noqa: S105 - the NAME of a variable, not a secret


@dataclass(frozen=True, slots=True)
class BakeResult:
    repos: list[RepoResult]
    manifest: Path | None

    @property
    def failed(self) -> bool:
        return not self.repos or any(r.failed for r in self.repos) or self.manifest is None


def bake_environment(
    config: Config, environ: Mapping[str, str], token_file: Path | None
) -> tuple[AuthConfig, dict[str, str]]:
    """The auth to use and the environment holding it: the configured variable, or a token file
    (BuildKit secrets appear as /run/secrets/<id>)."""
    env = dict(environ)
    auth = config.git.auth
    if token_file is None:
        return auth, env
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"--token-file {token_file}: {exc.strerror}") from None
    if not token:
        raise UsageError(f"--token-file {token_file} is empty")
    name = auth.token_env or _TOKEN_FROM_FILE
    if not env.get(name):
        env[name] = token
    return (auth if auth.token_env else AuthConfig(token_env=name)), env


def bake(
    config: Config,
    dest: Path,
    git: Git,
    *,
    environ: Mapping[str, str],
    token_file: Path | None,
    jobs: int | None,
) -> BakeResult:
    tasks = plan_sync(config, ignore_enabled=True)
    if not tasks:
        raise UsageError(f"nothing to bake: no CodeCollection in {config.path} has a git_url")
    require_writable_dir(dest, setting="--dest")
    auth, env = bake_environment(config, environ, token_file)
    options = replace(SyncOptions.from_config(config, jobs=jobs), auth=auth)
    layout = Layout(dest)
    syncer = MirrorSyncer(git=git, layout=layout, options=options, environ=env)
    results = syncer.run(tasks)
    good = [r for r in results if not r.failed]
    if not good or len(good) != len(results):
        return BakeResult(results, None)
    for r in good:
        _readable_by_all(layout.repo(r.slug))
    # locks and temp dirs belong to a host that syncs; an image only carries the mirrors
    shutil.rmtree(layout.work_dir, ignore_errors=True)
    return BakeResult(results, write_manifest(dest, [manifest_entry(git, layout, r) for r in good]))


def manifest_entry(git: Git, layout: Layout, result: RepoResult) -> dict[str, Any]:
    repo = layout.repo(result.slug)
    state = Mirror(git, repo).local_state("all")
    pack_bytes = sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))
    return {
        "slug": result.slug,
        "upstream_url": result.upstream_url,
        "default_branch": result.default_branch,
        "head_commit": result.head_commit,
        "refs": dict(sorted(state.refs.items())),
        "refs_fingerprint": fingerprint(state.head, state.refs),
        "pack_size_bytes": pack_bytes,
    }


def write_manifest(dest: Path, repos: Sequence[dict[str, Any]]) -> Path:
    doc = {
        "cccatalog_version": __version__,
        "baked_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "repos": sorted(repos, key=lambda r: str(r["slug"])),
    }
    target = dest / MANIFEST
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".manifest-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def baked_at(data_dir: Path) -> datetime | None:
    """When the mirrors in `data_dir` were baked, from its manifest; None without a readable one."""
    try:
        doc = json.loads((data_dir / MANIFEST).read_text(encoding="utf-8"))
        return datetime.fromisoformat(str(doc["baked_at"]).replace("Z", "+00:00")).astimezone(UTC)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _readable_by_all(repo: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(repo):
        os.chmod(dirpath, 0o755)  # noqa: S103 - readable by any uid is the point of a baked repo
        for name in filenames:
            path = Path(dirpath, name)
            path.chmod(path.stat().st_mode | 0o444)


def check_manifest(git: Git, data_dir: Path, slugs: Sequence[str] | None = None) -> list[str]:
    """Compare baked repos with their manifest: every listed repo present, at the listed refs.
    Returns one line per problem (empty when all is as baked, or there is no manifest)."""
    path = data_dir / MANIFEST
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        repos = doc["repos"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{path}: unreadable baked manifest ({type(exc).__name__})"]
    problems = []
    for entry in repos:
        slug = str(entry.get("slug"))
        if slugs is not None and slug not in slugs:
            continue
        try:
            repo = Layout(data_dir).repo(slug)
        except UsageError:
            problems.append(f"{slug!r}: not a valid slug, listed in the baked manifest")
            continue
        if not (repo / "HEAD").is_file():
            problems.append(f"{slug}: listed in the baked manifest but missing from {data_dir}")
            continue
        try:
            refs = Mirror(git, repo, foreign=True).local_state("all").refs
        except Exception as exc:  # any failure to read is a mismatch to report
            problems.append(f"{slug}: cannot read the baked repo ({type(exc).__name__})")
            continue
        if refs != entry.get("refs"):
            problems.append(f"{slug}: its refs differ from the baked manifest")
    return problems
