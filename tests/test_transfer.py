"""Updating an air-gapped site: `manifest` at the site, `export --since` on the connected side,
`import` at the site while `serve` keeps serving — on real git, real processes and real signatures."""

from __future__ import annotations

import json
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from cccatalog.cli import run
from tests.apifixtures import image_tag
from tests.gitfixtures import Upstream, git
from tests.servefixtures import serve_process
from tests.transferfixtures import SIGNER, Sides, builds_at, cli, fsck, make_keys

MakeUpstream = Callable[[str], Upstream]
NO_SCHEDULER = {"CCCATALOG_DISABLE_SCHEDULER": "1"}


class CloneLoop:
    """Clones a repo through serve, one clone after another, until stopped; remembers every failure."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url, self.workdir = url, workdir
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            dest = self.workdir / f"clone-{self.done}"
            out = subprocess.run(
                ["git", "clone", "-q", "--mirror", self.url, str(dest)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                self.failures.append(out.stderr)
            else:
                fsck(dest)
            self.done += 1
            self._first.set()

    def __enter__(self) -> CloneLoop:
        self._thread.start()
        assert self._first.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        started = self.done
        while self.done < started + 1 and self._thread.is_alive():
            self._thread.join(0.05)  # one more whole clone after the import, then stop
        self._stop.set()
        self._thread.join(60)


def test_round_trip_brings_a_baked_site_to_the_connected_side_while_clients_clone(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    keys = make_keys(tmp_path / "keys")
    alpha, beta = make_upstream("alpha"), make_upstream("beta")
    old_feature = alpha.commit("feature work", branch="feature")
    sides = Sides(tmp_path / "sides", {"alpha": alpha.url, "beta": beta.url})
    trust = f"transfer:\n  allowed_signers: {keys.allowed_signers}\n  signer: {SIGNER}\n"
    sides.write(
        {"alpha": builds_at(alpha.sha("main")), "beta": builds_at(beta.sha("main"))}, site_extra=trust
    )
    sides.sync()
    sides.bake_site()

    # upstream, after the bake: new commits, a new tag, a deleted and a force-pushed branch, a new collection
    new_main = alpha.commit("new work")
    git("tag", "-a", "v1.1.0", "-m", "v1.1.0", cwd=alpha.path)
    git("branch", "-D", "develop", cwd=alpha.path)
    rewritten = alpha.commit("feature, rewritten", branch="feature")
    beta.commit("beta work")
    gamma = make_upstream("gamma")
    sides.urls["gamma"] = gamma.url
    sides.write(
        {
            "alpha": builds_at(new_main, tag="v1.1.0"),
            "beta": builds_at(beta.sha("main")),
            "gamma": builds_at(gamma.sha("main")),
        },
        stable={"alpha": "v1.1.0"},
        site_extra=trust,
    )
    sides.sync()
    gone = subprocess.run(
        ["git", "--git-dir", str(sides.connected_mirrors / "alpha.git"), "cat-file", "-e", old_feature],
        check=False,
    )
    assert gone.returncode != 0, "the old feature commit should be gone from the connected mirror"

    with serve_process(sides.site, env=NO_SCHEDULER) as (_proc, url):
        site_json = tmp_path / "site.json"
        site_json.write_text(httpx.get(f"{url}/api/v1/manifest").text)
        from_cli = cli("manifest", "-c", str(sides.site))
        assert from_cli.returncode == 0, from_cli.stderr
        assert json.loads(from_cli.stdout)["repos"] == json.loads(site_json.read_text())["repos"]

        update = tmp_path / "update.tar"
        exported = cli(
            "export",
            "--no-images",
            "-c",
            str(sides.connected),
            "--since",
            str(site_json),
            "--out",
            str(update),
            "--sign-key",
            str(keys.key),
            "--json",
        )
        assert exported.returncode == 0, exported.stderr
        kinds = {r["slug"]: r["kind"] for r in json.loads(exported.stdout)["repos"]}
        assert kinds == {"alpha": "incremental", "beta": "incremental", "gamma": "full"}
        with tarfile.open(update) as tar:
            names = tar.getnames()
            images = tar.extractfile("images.txt").read().decode()  # type: ignore[union-attr]
        assert names[:4] == ["manifest.json", "manifest.json.sig", "catalog.json", "images.txt"]
        assert f"registry.example.com/runwhen/alpha:{image_tag('v1.1.0', new_main[:7])}\n" in images

        assert "gamma" in sides.site.read_text()  # the site's operator configured the new collection
        with CloneLoop(f"{url}/git/alpha.git", tmp_path / "clones") as clones:
            imported = cli("import", str(update), "-c", str(sides.site), "--json")
        assert imported.returncode == 0, imported.stderr
        assert clones.failures == []
        assert clones.done >= 2
        actions = {r["slug"]: r["action"] for r in json.loads(imported.stdout)["repos"]}
        assert actions == {"alpha": "updated", "beta": "updated", "gamma": "cloned"}

        for slug in ("alpha", "beta", "gamma"):
            assert sides.site_refs(slug) == sides.connected_refs(slug), slug
            fsck(sides.site_mirrors / f"{slug}.git")
        assert "refs/heads/develop" not in sides.site_refs("alpha")
        assert sides.site_refs("alpha")["refs/heads/feature"] == rewritten

        catalog = f"{url}/api/v1/catalog/codecollections/alpha/resolve"
        latest = httpx.get(catalog, params={"pointer": "latest"}).json()
        stable = httpx.get(catalog, params={"pointer": "stable"}).json()
        assert latest["image_tag"] == image_tag("main", new_main[:7])
        assert stable["image_tag"] == image_tag("v1.1.0", new_main[:7])
        assert latest["image_registry"] == "registry.site.internal/runwhen/alpha"
        status = httpx.get(f"{url}/api/v1/git/repos/alpha").json()
        assert status["head_commit"] == new_main
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
        cloned = subprocess.run(
            ["git", "clone", "-q", f"{url}/git/gamma.git", str(tmp_path / "gamma")],
            capture_output=True,
            check=False,
        )
        assert cloned.returncode == 0, cloned.stderr

    manifest = sides.site_mirrors / "manifest.json"
    written = manifest.stat().st_mtime_ns
    again = cli("import", str(update), "-c", str(sides.site))
    assert again.returncode == 0, again.stderr
    assert "already applied, nothing changed" in again.stderr
    assert manifest.stat().st_mtime_ns == written


def test_a_full_export_builds_an_empty_site_and_an_unsigned_one_needs_allow_unsigned(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    up = make_upstream("alpha")
    sides = Sides(tmp_path, {"alpha": up.url})
    sides.write({"alpha": builds_at(up.sha("main"))})
    sides.sync()
    update = tmp_path / "full.tar"
    assert run(["-q", "export", "--no-images", "-c", str(sides.connected), "--out", str(update)]) == 0

    refused = cli("import", str(update), "-c", str(sides.site))
    assert refused.returncode == 2
    assert "no allowed signers" in refused.stderr
    assert not sides.site_mirrors.exists()

    done = cli("import", str(update), "-c", str(sides.site), "--allow-unsigned")
    assert done.returncode == 0, done.stderr
    assert sides.site_refs("alpha") == sides.connected_refs("alpha")
    assert not (sides.site_mirrors / "manifest.json.sig").exists()
    listed = json.loads((sides.site_mirrors / "manifest.json").read_text())
    assert listed["format"] == "cccatalog-manifest/1"
    assert listed["kind"] == "export"


def test_export_since_an_earlier_bake_manifest_without_a_format_is_incremental(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    up = make_upstream("alpha")
    sides = Sides(tmp_path, {"alpha": up.url})
    sides.write({})
    sides.sync()
    sides.bake_site()
    old_style = {
        "cccatalog_version": "0.0.9",
        "baked_at": "2026-01-01T00:00:00Z",
        "repos": [{"slug": "alpha", "refs": sides.site_refs("alpha"), "default_branch": "main"}],
    }
    since = tmp_path / "old-manifest.json"
    since.write_text(json.dumps(old_style))
    up.commit("after the bake")
    sides.sync()
    update = tmp_path / "u.tar"
    out = cli(
        "export",
        "--no-images",
        "-c",
        str(sides.connected),
        "--since",
        str(since),
        "--out",
        str(update),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    [repo] = json.loads(out.stdout)["repos"]
    assert repo["kind"] == "incremental"
    assert repo["prerequisites"] == [sides.site_refs("alpha")["refs/heads/main"]]
    done = cli("import", str(update), "-c", str(sides.site), "--allow-unsigned")
    assert done.returncode == 0, done.stderr
    assert sides.site_refs("alpha") == sides.connected_refs("alpha")


def test_an_export_with_only_moved_refs_carries_no_bundle(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    up = make_upstream("alpha")
    sides = Sides(tmp_path, {"alpha": up.url})
    sides.write({})
    sides.sync()
    sides.bake_site()
    site_json = tmp_path / "site.json"
    assert run(["-q", "manifest", "-c", str(sides.site), "--out", str(site_json)]) == 0
    git("branch", "-D", "develop", cwd=up.path)
    git("tag", "light", "HEAD", cwd=up.path)
    sides.sync()
    update = tmp_path / "u.tar"
    out = cli(
        "export",
        "--no-images",
        "-c",
        str(sides.connected),
        "--since",
        str(site_json),
        "--out",
        str(update),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    [repo] = json.loads(out.stdout)["repos"]
    assert (repo["kind"], repo["bundle"], repo["refs_changed"]) == ("refs", None, 2)
    done = cli("import", str(update), "-c", str(sides.site), "--allow-unsigned")
    assert done.returncode == 0, done.stderr
    assert sides.site_refs("alpha") == sides.connected_refs("alpha")
