"""Two sides of an air gap for the export/import tests: a connected host that syncs real upstreams
and reads image builds from static files, and a site baked from it that has no network at all
(`git.runtime_sync: false`, `images.runtime_sync: false`), plus real SSH signing keys."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from cccatalog.cli import run
from tests.apifixtures import build, write_builds
from tests.gitfixtures import Upstream, git, mirror_refs

SIGNER = "release@example.org"


@dataclass(frozen=True)
class Keys:
    key: Path  # the release key, in the allowed signers file as SIGNER
    other: Path  # a key nobody allowed
    allowed_signers: Path


def make_keys(root: Path) -> Keys:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("release", "other"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)], check=True
        )
    allowed = root / "allowed_signers"
    allowed.write_text(f"{SIGNER} {(root / 'release.pub').read_text()}")
    return Keys(root / "release", root / "other", allowed)


@dataclass
class Sides:
    root: Path
    urls: dict[str, str]  # slug -> upstream URL

    @property
    def connected(self) -> Path:
        return self.root / "connected" / "config.yaml"

    @property
    def site(self) -> Path:
        return self.root / "site" / "config.yaml"

    @property
    def site_mirrors(self) -> Path:
        return self.root / "site" / "mirrors"

    @property
    def connected_mirrors(self) -> Path:
        return self.root / "connected" / "mirrors"

    def write(
        self,
        builds: Mapping[str, Sequence[Mapping[str, object]]],
        *,
        stable: Mapping[str, str] | None = None,
        site_extra: str = "",
    ) -> None:
        """Both configs with the collections in `self.urls`; `builds` become the connected side's
        static image files."""
        connected, site = [], []
        for slug, url in sorted(self.urls.items()):
            registry = f"registry.example.com/runwhen/{slug}"
            entry = {"slug": slug, "git_url": url, "image_registry": registry}
            write_builds(self.connected, slug, builds.get(slug, []), stable_ref=(stable or {}).get(slug))
            connected.append({**entry, "static_path": f"static/{slug}.json"})
            site.append({**entry, "image_registry": f"registry.site.internal/runwhen/{slug}"})
        base_git = {"enabled": True, "data_dir": "mirrors", "lock_timeout_seconds": 30}
        state = {"path": "state/state.sqlite3"}
        connected_doc = {
            "git": base_git,
            "state": state,
            "sources": [{"name": "builds", "type": "static", "codecollections": connected}],
        }
        site_doc = {
            "git": {**base_git, "runtime_sync": False},
            "images": {"runtime_sync": False},
            "state": state,
            "sources": [{"name": "ghcr", "type": "oci", "codecollections": site}],
        }
        self.connected.parent.mkdir(parents=True, exist_ok=True)
        self.site.parent.mkdir(parents=True, exist_ok=True)
        self.connected.write_text(yaml.safe_dump(connected_doc, sort_keys=False))
        self.site.write_text(yaml.safe_dump(site_doc, sort_keys=False) + site_extra)

    def sync(self) -> None:
        assert run(["-q", "sync", "-c", str(self.connected)]) == 0

    def bake_site(self) -> None:
        """The release image's mirrors: baked on the connected host, straight into the site's data_dir."""
        assert run(["-q", "bake", "-c", str(self.connected), "--dest", str(self.site_mirrors)]) == 0

    def site_refs(self, slug: str) -> dict[str, str]:
        return mirror_refs(self.site_mirrors / f"{slug}.git")

    def connected_refs(self, slug: str) -> dict[str, str]:
        return mirror_refs(self.connected_mirrors / f"{slug}.git")


def cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m cccatalog ARGS` as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "cccatalog", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def fsck(repo: Path) -> None:
    git("--git-dir", str(repo), "fsck", "--strict", "--no-dangling")


def builds_at(
    commit: str, *, tag: str | None = None, tag_commit: str | None = None
) -> list[dict[str, object]]:
    found = [build("main", commit[:7], built_at="2026-01-02T00:00:00Z")]
    if tag:
        found.append(build(tag, (tag_commit or commit)[:7], built_at="2026-01-01T00:00:00Z"))
    return found


@dataclass
class Applied:
    """A site brought to T0 by a signed full import; the connected side then moved on to T1."""

    sides: Sides
    keys: Keys
    upstreams: dict[str, Upstream]
    site_json: Path  # the site's manifest at T0
    tmp: Path

    def export(self, name: str, *extra: str, since: Path | None = None) -> Path:
        out = self.tmp / name
        args = ["export", "--no-images", "-c", str(self.sides.connected), "--out", str(out), *extra]
        done = cli(*args, *(["--since", str(since or self.site_json)]))
        assert done.returncode == 0, done.stderr
        return out


def applied_site(tmp_path: Path, make_upstream: Callable[[str], Upstream]) -> Applied:
    keys = make_keys(tmp_path / "keys")
    ups = {slug: make_upstream(slug) for slug in ("alpha", "beta")}
    sides = Sides(tmp_path / "sides", {slug: up.url for slug, up in ups.items()})
    trust = f"transfer:\n  allowed_signers: {keys.allowed_signers}\n  signer: {SIGNER}\n"
    sides.write({slug: builds_at(up.sha("main")) for slug, up in ups.items()}, site_extra=trust)
    sides.sync()
    full = tmp_path / "full.tar"
    assert (
        cli(
            "export",
            "--no-images",
            "-c",
            str(sides.connected),
            "--out",
            str(full),
            "--sign-key",
            str(keys.key),
        ).returncode
        == 0
    )
    done = cli("import", str(full), "-c", str(sides.site))
    assert done.returncode == 0, done.stderr
    site_json = tmp_path / "site.json"
    assert cli("manifest", "-c", str(sides.site), "--out", str(site_json)).returncode == 0
    for slug, up in ups.items():
        up.commit(f"{slug} after T0")
    sides.write({slug: builds_at(up.sha("main")) for slug, up in ups.items()}, site_extra=trust)
    sides.sync()
    return Applied(sides, keys, ups, site_json, tmp_path)


def snapshot(sides: Sides) -> dict[str, object]:
    """Everything an import could change: every file under the site's data_dir (its bytes' size and
    mtime), and every row of its state file."""
    files = {
        str(p.relative_to(sides.site_mirrors)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(sides.site_mirrors.rglob("*"))
        if p.is_file() and "state.sqlite3" not in p.name
    }
    conn = sqlite3.connect(sides.site.parent / "state" / "state.sqlite3")
    try:
        rows = {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()  # noqa: S608
            for table in ("cccatalog_git_mirrors", "cccatalog_image_refs", "cccatalog_image_syncs")
        }
    finally:
        conn.close()
    return {"files": files, "rows": rows}


def refused(applied: Applied, update: Path, *extra: str) -> str:
    before = snapshot(applied.sides)
    done = cli("import", str(update), "-c", str(applied.sides.site), *extra)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert snapshot(applied.sides) == before
    return lines[0]
