"""Images across the gap, between real registries: a connected host polling a token-auth registry,
a site whose registry wants htpasswd credentials. Connected sync -> site `manifest` -> `export
--since` -> `import`: the site registry serves the same digests and the site's catalog resolves to
them; a second build sharing base layers crosses carrying only its new blobs; a tampered blob and an
unreachable site registry are refused without the catalog naming an image the site lacks."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from cccatalog.catalog.store import Store
from cccatalog.cli import run
from cccatalog.config import load_config
from tests.apifixtures import image_tag
from tests.gitfixtures import Upstream
from tests.imagefixtures import Build, HoldingFront, push_build, tag_is_whole
from tests.registry import ALL_MANIFESTS, PASSWORD, USERNAME, RunningRegistry, registry_client, sha256
from tests.servefixtures import serve_process

NO_SCHEDULER = {"CCCATALOG_SCHEDULER": "0"}


@dataclass
class Gap:
    root: Path
    upstream: Upstream
    source: RunningRegistry
    site: RunningRegistry
    source_repo: str
    site_repo: str

    @property
    def connected_config(self) -> Path:
        return self.root / "connected" / "config.yaml"

    @property
    def site_config(self) -> Path:
        return self.root / "site" / "config.yaml"

    def write(self, *, site_registry: str | None = None) -> None:
        base_git = {"enabled": True, "data_dir": "mirrors", "lock_timeout_seconds": 30}
        state = {"path": "state/state.sqlite3"}
        auth = {"user_env": "CC_REGISTRY_USER", "pass_env": "CC_REGISTRY_PASS"}
        collection = {"slug": "alpha", "git_url": self.upstream.url}
        connected = {
            "git": base_git,
            "state": state,
            "sources": [
                {
                    "name": "ghcr",
                    "type": "oci",
                    "auth": auth,
                    "codecollections": [
                        {**collection, "image_registry": f"{self.source.host}/{self.source_repo}"}
                    ],
                }
            ],
        }
        site = {
            "git": {**base_git, "runtime_sync": False},
            "images": {"runtime_sync": False},
            "state": state,
            "sources": [
                {
                    "name": "internal",
                    "type": "oci",
                    "auth": auth,
                    "codecollections": [
                        {
                            **collection,
                            "image_registry": site_registry or f"{self.site.host}/{self.site_repo}",
                        }
                    ],
                }
            ],
        }
        for path, doc in ((self.connected_config, connected), (self.site_config, site)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def build(self, message: str, *, own: str, created: str = "2026-01-02T00:00:00Z") -> Build:
        commit = self.upstream.commit(message)
        return push_build(
            self.source,
            self.source_repo,
            image_tag("main", commit[:7]),
            base=["os", "python"],
            own=own,
            created=created,
        )

    def cross(self, name: str, *, extra: tuple[str, ...] = ()) -> tuple[Path, int]:
        """Connected sync, site manifest, export --since it; returns (update, import exit code)."""
        assert run(["-q", "sync", "-c", str(self.connected_config)]) == 0
        site_json, update = self.root / f"{name}.site.json", self.root / f"{name}.tar"
        assert run(["-q", "manifest", "-c", str(self.site_config), "--out", str(site_json)]) == 0
        exported = [
            "-q",
            "export",
            "-c",
            str(self.connected_config),
            "--since",
            str(site_json),
            "--out",
            str(update),
        ]
        assert run([*exported, *extra]) == 0
        return update, run(["-q", "import", str(update), "-c", str(self.site_config), "--allow-unsigned"])

    def site_rows(self) -> dict[str, str]:
        with Store.for_config(load_config(self.site_config)) as store:
            return {r.ref: f"{r.image_registry}:{r.image_tag}" for r in store.list_image_refs("alpha")}


def carried_blobs(update: Path) -> set[str]:
    with tarfile.open(update) as tar:
        return {
            f"sha256:{m.name.rsplit('/', 1)[1]}" for m in tar if m.name.startswith("images/blobs/sha256/")
        }


@pytest.fixture
def gap(
    tmp_path: Path,
    make_upstream: Callable[[str], Upstream],
    registry_token: RunningRegistry,
    registry_basic: RunningRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> Gap:
    monkeypatch.setenv("CC_REGISTRY_USER", USERNAME)
    monkeypatch.setenv("CC_REGISTRY_PASS", PASSWORD)
    upstream = make_upstream("alpha")
    suffix = uuid.uuid4().hex[:10]
    found = Gap(
        tmp_path, upstream, registry_token, registry_basic, f"runwhen/alpha-{suffix}", f"site/alpha-{suffix}"
    )
    found.write()
    return found


def test_images_cross_the_gap_and_an_update_carries_only_the_new_blobs(gap: Gap) -> None:
    first = gap.build("first", own="v1")
    update, imported = gap.cross("first")
    assert imported == 0
    assert carried_blobs(update) >= first.blobs  # the site held nothing: every blob crossed
    # the layout in the file is a standard one: skopeo and umoci read it, unpacked as the docs say
    (gap.root / "unpacked").mkdir()
    subprocess.run(
        ["tar", "-xf", str(update), "-C", str(gap.root / "unpacked"), "images/"], timeout=30, check=True
    )
    layout = gap.root / "unpacked" / "images"
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{layout}:alpha:{first.tag}"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert sha256(raw) == first.digest
    listed = subprocess.run(
        ["umoci", "ls", "--layout", str(layout)], capture_output=True, text=True, timeout=30, check=True
    )
    assert listed.stdout.split() == [f"alpha:{first.tag}"]
    assert tag_is_whole(gap.site, gap.site_repo, first.tag) is True
    with registry_client(gap.site) as client:
        head = client.head(f"/v2/{gap.site_repo}/manifests/{first.tag}", headers={"Accept": ALL_MANIFESTS})
    assert head.headers["Docker-Content-Digest"] == first.digest

    second = gap.build("second, on the same base", own="v2", created="2026-01-03T00:00:00Z")
    update2, imported2 = gap.cross("second")
    assert imported2 == 0
    site_json = json.loads((gap.root / "second.site.json").read_text())
    assert set(site_json["images"]["alpha"]["blobs"]) == first.blobs  # the site said what it holds
    carried = carried_blobs(update2)
    new = second.blobs - first.blobs
    assert carried == new | set(second.manifests) | {second.digest}  # its own layers, configs, manifests
    assert len(new) == 4
    assert update2.stat().st_size < update.stat().st_size
    assert tag_is_whole(gap.site, gap.site_repo, second.tag) is True

    # the site's catalog, as its clients see it over HTTP, names the site registry and the new build
    with serve_process(gap.site_config, env=NO_SCHEDULER) as (_proc, url):
        latest = httpx.get(
            f"{url}/api/v1/catalog/codecollections/alpha/resolve", params={"pointer": "latest"}
        ).json()
    assert latest["image_registry"] == f"{gap.site.host}/{gap.site_repo}"
    assert latest["image_tag"] == second.tag
    with registry_client(gap.site) as client:
        head = client.head(
            f"/v2/{gap.site_repo}/manifests/{latest['image_tag']}", headers={"Accept": ALL_MANIFESTS}
        )
    assert head.headers["Docker-Content-Digest"] == second.digest

    again = run(["-q", "import", str(update2), "-c", str(gap.site_config), "--allow-unsigned"])
    assert again == 0  # an update already applied changes nothing and fails nothing


def test_no_images_carries_only_their_names(gap: Gap) -> None:
    first = gap.build("first", own="v1")
    update, imported = gap.cross("first", extra=("--no-images",))
    assert imported == 0
    with tarfile.open(update) as tar:
        names = tar.getnames()
        images_txt = tar.extractfile("images.txt").read().decode()  # type: ignore[union-attr]
    assert not [n for n in names if n.startswith("images/")]
    assert images_txt == f"{gap.source.host}/{gap.source_repo}:{first.tag}\n"
    assert tag_is_whole(gap.site, gap.site_repo, first.tag) is None  # left to the site's own tool


@pytest.mark.security
def test_a_tampered_blob_is_refused_before_anything_is_pushed(
    gap: Gap, capsys: pytest.CaptureFixture[str]
) -> None:
    first = gap.build("first", own="v1")
    assert run(["-q", "sync", "-c", str(gap.connected_config)]) == 0
    update = gap.root / "update.tar"
    assert run(["-q", "export", "-c", str(gap.connected_config), "--out", str(update)]) == 0
    tampered = gap.root / "tampered.tar"
    with tarfile.open(update) as src, tarfile.open(tampered, "w", format=tarfile.PAX_FORMAT) as out:
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.startswith("images/blobs/sha256/") and len(data) == 2048:  # a layer
                data = data[:-1] + bytes([data[-1] ^ 1])
            out.addfile(member, io.BytesIO(data))
    capsys.readouterr()
    assert run(["-q", "import", str(tampered), "-c", str(gap.site_config), "--allow-unsigned"]) == 2
    assert "does not match its sha256" in capsys.readouterr().err
    assert tag_is_whole(gap.site, gap.site_repo, first.tag) is None
    assert gap.site_rows() == {}


@pytest.mark.security
def test_an_unreachable_site_registry_fails_the_import_and_keeps_the_rows(
    gap: Gap, capsys: pytest.CaptureFixture[str]
) -> None:
    gap.build("first", own="v1")
    assert run(["-q", "sync", "-c", str(gap.connected_config)]) == 0
    update = gap.root / "update.tar"
    assert run(["-q", "export", "-c", str(gap.connected_config), "--out", str(update)]) == 0
    gap.write(site_registry="127.0.0.1:9/site/alpha")  # nothing listens on the discard port
    capsys.readouterr()
    assert run(["-q", "import", str(update), "-c", str(gap.site_config), "--allow-unsigned"]) == 1
    err = capsys.readouterr().err
    assert "not pushed, its catalog rows kept" in err
    assert PASSWORD not in err
    assert gap.site_rows() == {}  # no row names an image the site registry does not hold


def test_a_site_without_an_image_registry_is_refused_and_nothing_is_written(
    gap: Gap, capsys: pytest.CaptureFixture[str]
) -> None:
    gap.build("first", own="v1")
    assert run(["-q", "sync", "-c", str(gap.connected_config)]) == 0
    update = gap.root / "update.tar"
    assert run(["-q", "export", "-c", str(gap.connected_config), "--out", str(update)]) == 0
    site = yaml.safe_load(gap.site_config.read_text())
    del site["sources"][0]["codecollections"][0]["image_registry"]
    gap.site_config.write_text(yaml.safe_dump(site))
    capsys.readouterr()
    assert run(["-q", "import", str(update), "-c", str(gap.site_config), "--allow-unsigned"]) == 2
    err = capsys.readouterr().err
    assert "alpha: the update carries its images" in err
    assert "--no-images" in err
    assert not (gap.root / "site" / "mirrors").exists()
    assert not (gap.root / "site" / "state").exists() or gap.site_rows() == {}


def test_an_image_gone_from_the_connected_registry_fails_the_export_and_writes_nothing(
    gap: Gap, capsys: pytest.CaptureFixture[str]
) -> None:
    build = gap.build("first", own="v1")
    assert run(["-q", "sync", "-c", str(gap.connected_config)]) == 0
    with registry_client(gap.source) as client:  # a retention policy removed it after the sync
        assert client.delete(f"/v2/{gap.source_repo}/manifests/{build.digest}").status_code == 202
    update = gap.root / "update.tar"
    capsys.readouterr()
    assert run(["-q", "export", "-c", str(gap.connected_config), "--out", str(update)]) == 1
    err = capsys.readouterr().err
    assert f"copying {gap.source.host}/{gap.source_repo}:{build.tag}" in err
    assert PASSWORD not in err
    assert not update.exists()
    assert [p.name for p in gap.root.iterdir() if p.name.startswith(".update.tar")] == []


def test_a_stale_site_manifest_fails_that_image_with_what_to_do_and_a_fresh_one_completes_it(
    gap: Gap, capsys: pytest.CaptureFixture[str]
) -> None:
    first = gap.build("first", own="v1")
    _update, imported = gap.cross("first")
    assert imported == 0
    stale = gap.root / "stale.site.json"
    assert run(["-q", "manifest", "-c", str(gap.site_config), "--out", str(stale)]) == 0
    with registry_client(gap.site) as client:  # someone cleans the site registry after the manifest
        for digest in (first.digest, *first.manifests):
            assert client.delete(f"/v2/{gap.site_repo}/manifests/{digest}").status_code == 202
    update = gap.root / "after-cleanup.tar"
    assert (
        run(["-q", "export", "-c", str(gap.connected_config), "--since", str(stale), "--out", str(update)])
        == 0
    )
    capsys.readouterr()
    assert run(["-q", "import", str(update), "-c", str(gap.site_config), "--allow-unsigned"]) == 1
    assert "run cccatalog manifest at the site again" in capsys.readouterr().err
    assert tag_is_whole(gap.site, gap.site_repo, first.tag) is None

    _update, imported = gap.cross("fresh")
    assert imported == 0
    assert tag_is_whole(gap.site, gap.site_repo, first.tag) is True


@pytest.mark.security
def test_an_update_whose_layout_is_not_one_is_refused(gap: Gap, capsys: pytest.CaptureFixture[str]) -> None:
    """Unsigned, so its manifest can be rewritten to match: the layout itself is what is checked."""
    first = gap.build("first", own="v1")
    assert run(["-q", "sync", "-c", str(gap.connected_config)]) == 0
    update = gap.root / "update.tar"
    assert run(["-q", "export", "-c", str(gap.connected_config), "--out", str(update)]) == 0
    broken, garbage = gap.root / "broken.tar", b"not an index\n"
    with tarfile.open(update) as src, tarfile.open(broken, "w", format=tarfile.PAX_FORMAT) as out:
        members = {m.name: (m, src.extractfile(m).read()) for m in src}  # type: ignore[union-attr]
        doc = json.loads(members["manifest.json"][1])
        doc["transfer"]["files"]["images/index.json"] = {
            "sha256": hashlib.sha256(garbage).hexdigest(),
            "size": len(garbage),
        }
        members["manifest.json"] = (members["manifest.json"][0], json.dumps(doc).encode())
        members["images/index.json"] = (members["images/index.json"][0], garbage)
        for member, data in members.values():
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    capsys.readouterr()
    assert run(["-q", "import", str(broken), "-c", str(gap.site_config), "--allow-unsigned"]) == 2
    assert "images/index.json: " in capsys.readouterr().err
    assert tag_is_whole(gap.site, gap.site_repo, first.tag) is None
    assert gap.site_rows() == {}


@pytest.mark.security
def test_an_import_killed_while_pushing_images_leaves_no_tag_and_no_rows_and_the_next_completes(
    gap: Gap,
) -> None:
    first = gap.build("first", own="v1")
    assert run(["-q", "sync", "-c", str(gap.connected_config)]) == 0
    update = gap.root / "update.tar"
    assert run(["-q", "export", "-c", str(gap.connected_config), "--out", str(update)]) == 0
    front = HoldingFront(gap.site, uploads_before_hold=3)  # three blobs in, the fourth held
    try:
        gap.write(site_registry=f"{front.host}/{gap.site_repo}")
        argv = [
            sys.executable,
            "-m",
            "cccatalog",
            "-q",
            "import",
            str(update),
            "-c",
            str(gap.site_config),
            "--allow-unsigned",
        ]
        with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as importing:
            assert front.held.wait(60), importing.stderr.read() if importing.stderr else ""
            importing.kill()
            importing.wait(30)
        assert importing.returncode == -signal.SIGKILL
        front.release.set()
        assert tag_is_whole(gap.site, gap.site_repo, first.tag) is None  # the tag is written last
        assert gap.site_rows() == {}  # and the rows after it
        assert run(["-q", "import", str(update), "-c", str(gap.site_config), "--allow-unsigned"]) == 0
    finally:
        front.stop()
    assert tag_is_whole(gap.site, gap.site_repo, first.tag) is True
    assert gap.site_rows() == {"main": f"{front.host}/{gap.site_repo}:{first.tag}"}


def test_export_and_import_say_what_happened_to_the_images(
    gap: Gap, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two images (main and a release tag), copied at once both ways."""
    first = gap.build("first", own="v1")
    release = push_build(
        gap.source,
        gap.source_repo,
        image_tag("v1.0.0", gap.upstream.sha("main")[:7]),
        base=["os", "python"],
        own="release",
        created="2026-01-01T00:00:00Z",
    )
    assert run(["-q", "sync", "-c", str(gap.connected_config)]) == 0
    update = gap.root / "update.tar"
    capsys.readouterr()
    assert run(["export", "-c", str(gap.connected_config), "--out", str(update)]) == 0
    blobs = len(first.blobs | release.blobs)
    assert f"images: 2 carried, with the {blobs} blobs" in capsys.readouterr().out
    with tarfile.open(update) as tar:
        index = json.loads(tar.extractfile("images/index.json").read())  # type: ignore[union-attr]
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert names == sorted([f"alpha:{first.tag}", f"alpha:{release.tag}"])  # in order, however they finished
    assert run(["import", str(update), "-c", str(gap.site_config), "--allow-unsigned"]) == 0
    assert f"images: 2 pushed ({blobs} blobs), 0 there already, 0 failed" in capsys.readouterr().out
    assert tag_is_whole(gap.site, gap.site_repo, first.tag) is True
    assert tag_is_whole(gap.site, gap.site_repo, release.tag) is True
    assert run(["import", str(update), "-c", str(gap.site_config), "--allow-unsigned", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [(i["tag"], i["digest"], i["action"], i["blobs_pushed"]) for i in again["images"]] == [
        (first.tag, first.digest, "present", 0),
        (release.tag, release.digest, "present", 0),
    ]


def test_the_images_of_several_collections_cross_at_once(
    gap: Gap, make_upstream: Callable[[str], Upstream], capsys: pytest.CaptureFixture[str]
) -> None:
    """Five collections, more than are copied at once: every image arrives whole, each in its own
    site repository, and the layout names them in order."""
    slugs = ["alpha", "beta", "gamma", "delta", "epsilon"]
    upstreams = {"alpha": gap.upstream} | {slug: make_upstream(slug) for slug in slugs[1:]}
    builds = {}
    for slug, up in upstreams.items():
        commit = up.commit(f"{slug} one")
        builds[slug] = push_build(
            gap.source, f"{gap.source_repo}-{slug}", image_tag("main", commit[:7]), base=["os"], own=slug
        )
    auth = {"user_env": "CC_REGISTRY_USER", "pass_env": "CC_REGISTRY_PASS"}
    base_git = {"enabled": True, "data_dir": "mirrors", "lock_timeout_seconds": 30}
    state = {"path": "state/state.sqlite3"}
    for path, host, repo_of, extra in (
        (gap.connected_config, gap.source.host, gap.source_repo, {}),
        (gap.site_config, gap.site.host, gap.site_repo, {"runtime_sync": False}),
    ):
        collections = [
            {"slug": s, "git_url": upstreams[s].url, "image_registry": f"{host}/{repo_of}-{s}"} for s in slugs
        ]
        source = {"name": "ghcr", "type": "oci", "auth": auth, "codecollections": collections}
        doc = {"git": {**base_git, **extra}, "state": state, "sources": [source]}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert run(["-q", "sync", "-c", str(gap.connected_config)]) == 0
    update = gap.root / "update.tar"
    capsys.readouterr()
    assert run(["export", "-c", str(gap.connected_config), "--out", str(update)]) == 0
    assert "images: 5 carried" in capsys.readouterr().out
    with tarfile.open(update) as tar:
        index = json.loads(tar.extractfile("images/index.json").read())  # type: ignore[union-attr]
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert names == sorted(f"{s}:{builds[s].tag}" for s in slugs)
    assert run(["-q", "import", str(update), "-c", str(gap.site_config), "--allow-unsigned"]) == 0
    for slug in slugs:
        assert tag_is_whole(gap.site, f"{gap.site_repo}-{slug}", builds[slug].tag) is True, slug
