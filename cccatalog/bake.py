"""`cccatalog bake`: mirrors for a release image, through the same sync code, plus a manifest.

The manifest (`<dest>/manifest.json`, written atomically, in the one format of `cccatalog.manifest`)
lists per repo the slug, the upstream URL without credentials, default branch, head commit, every ref
and a fingerprint of them, and the pack size; with `--sign-key` an SSH signature goes beside it.
`serve` checks the baked repos against it at start-up (`cccatalog.baked`). Baked repos are made
readable by any uid, since the runtime image may run under an arbitrary one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cccatalog import envvars, manifest
from cccatalog.atomic import write_atomic
from cccatalog.config import AuthConfig, Config
from cccatalog.errors import UsageError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import Mirror
from cccatalog.gitmirror.sync import MirrorSyncer, RepoResult, SyncOptions, plan_sync
from cccatalog.manifest import RepoManifest
from cccatalog.paths import require_writable_dir


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
    (BuildKit secrets appear as /run/secrets/<id>). The file, asked for explicitly, wins over any
    value the variable already has; without `git.auth.token_env` its token goes in
    `CCCATALOG_BAKE_TOKEN`, for git's environment only."""
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
    name = auth.token_env or envvars.BAKE_TOKEN[0]
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
    sign_key: Path | None = None,
) -> BakeResult:
    tasks = plan_sync(config, ignore_enabled=True)
    if not tasks:
        raise UsageError(f"nothing to bake: no CodeCollection in {config.path} has a git_url")
    require_writable_dir(dest, setting="--dest")
    if sign_key is not None and not sign_key.is_file():
        raise UsageError(f"--sign-key {sign_key}: no such file")
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
    entries = [manifest_entry(git, layout, r) for r in good]
    return BakeResult(results, write_manifest(dest, config, entries, sign_key=sign_key, environ=environ))


def manifest_entry(git: Git, layout: Layout, result: RepoResult) -> RepoManifest:
    repo = layout.repo(result.slug)
    state = Mirror(git, repo).local_state("all")
    pack_bytes = sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))
    branch = (state.head or "").removeprefix("refs/heads/") or None
    return RepoManifest(
        result.slug, branch, state.head_commit, dict(state.refs), result.upstream_url, pack_bytes
    )


def write_manifest(
    dest: Path,
    config: Config,
    repos: Sequence[RepoManifest],
    *,
    sign_key: Path | None,
    environ: Mapping[str, str],
) -> Path:
    """`<dest>/manifest.json` (and `.sig` with a key), each replaced in one rename. The catalog is
    not baked: the image half fills it at the site."""
    doc = manifest.document(
        "bake", repos, collections=[cc.slug for cc in config.codecollections], catalog=None
    )
    doc["baked_at"] = doc["created_at"]  # the name manifests of earlier versions used
    data = manifest.dumps(doc)
    target = dest / manifest.MANIFEST
    if sign_key is None:
        write_atomic(target, data)
        (dest / manifest.SIGNATURE).unlink(missing_ok=True)
        return target
    from cccatalog.signing import sign

    with tempfile.TemporaryDirectory(dir=dest, prefix=".cccatalog-sign-") as tmp:
        unsigned = Path(tmp, manifest.MANIFEST)
        unsigned.write_bytes(data)
        signature = sign(unsigned, sign_key, environ=environ).read_bytes()
    write_atomic(dest / manifest.SIGNATURE, signature)
    write_atomic(target, data)
    return target


def _readable_by_all(repo: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(repo):
        os.chmod(dirpath, 0o755)  # noqa: S103 - readable by any uid is the point of a baked repo
        for name in filenames:
            path = Path(dirpath, name)
            path.chmod(path.stat().st_mode | 0o444)
