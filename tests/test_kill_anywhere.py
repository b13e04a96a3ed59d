"""Kill `sync`, `bake` and `serve` anywhere: afterwards no process of the run is left, no half-made
mirror is served, and the next run finishes the work (mirror complete, maintenance done, state right).

Each kill point is found deterministically: a loopback upstream that holds one kind of request (the
run is then mid-clone or mid-fetch, with git's HTTP helpers running), or a stand-in `git` on PATH that
stops at one subcommand (before it, or once it has done its work). Real git, real processes; the
run's processes are told apart from other runs' by its process tree, groups and sessions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cccatalog.catalog.store import Store
from cccatalog.config import load_config
from cccatalog.errors import GitError
from cccatalog.gitmirror.children import ChildGroups
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.redact import Redactor
from tests.gitfixtures import Behaviour, HTTPUpstreamServer, Stage, Upstream, git, http_upstream, mirror_refs
from tests.procfixtures import RunWatch, StandIn, stopping_git, watching
from tests.robustfixtures import add_random_blobs, pkt_line
from tests.servefixtures import running_server, serve_process
from tests.waiting import wait_until

pytestmark = [pytest.mark.security, pytest.mark.slow]

MakeUpstream = Callable[[str], Upstream]
ADMIN = "admin-token-for-kill-tests"
SURVIVOR_SECONDS = 10  # a killed run's processes must all be gone by then


@dataclass(frozen=True)
class Hold:
    """The upstream holds this request: the run is inside git, its HTTP helpers waiting."""

    stage: Stage


@dataclass(frozen=True)
class Stop:
    """A stand-in git stops at this subcommand (in a repo path containing `only_in`)."""

    subcommand: str
    after: bool = False
    only_in: str | None = None


@dataclass(frozen=True)
class KillPoint:
    command: str  # sync | bake | serve (its admin sync-git)
    behind: bool  # a published mirror exists and the upstream has moved on; else a first clone
    how: Hold | Stop


TMP = ".cccatalog/tmp"
REREAD = "%(objectname) %(refname)"
KILL_POINTS = {
    "sync-clone-advertisement": KillPoint("sync", False, Hold("advertisement")),
    "sync-clone-fetch": KillPoint("sync", False, Hold("fetch")),
    "sync-clone-fsck": KillPoint("sync", False, Stop("fsck")),
    "sync-clone-repack": KillPoint("sync", False, Stop("repack", only_in=TMP)),
    "sync-clone-before-publish": KillPoint("sync", False, Stop("commit-graph", after=True, only_in=TMP)),
    "sync-update-ls-refs": KillPoint("sync", True, Hold("ls-refs")),
    "sync-update-fetch": KillPoint("sync", True, Hold("fetch")),
    "sync-update-after-fetch": KillPoint("sync", True, Stop("fetch", after=True)),
    "sync-update-pack-refs": KillPoint("sync", True, Stop("pack-refs")),
    "sync-update-repack": KillPoint("sync", True, Stop("repack")),
    "sync-update-commit-graph": KillPoint("sync", True, Stop("commit-graph")),
    # the refs read back after maintenance (the inspection before it also asks for %(objecttype))
    "sync-update-after-maintenance": KillPoint("sync", True, Stop("for-each-ref", only_in=REREAD)),
    "bake-clone-fetch": KillPoint("bake", False, Hold("fetch")),
    "bake-before-publish": KillPoint("bake", False, Stop("commit-graph", after=True, only_in=TMP)),
    "bake-after-publish": KillPoint("bake", False, Stop("for-each-ref", only_in="baked/alpha.git")),
    "bake-update-after-fetch": KillPoint("bake", True, Stop("fetch", after=True)),
    "serve-admin-sync-fetch": KillPoint("serve", True, Hold("fetch")),
    "serve-admin-sync-after-fetch": KillPoint("serve", True, Stop("fetch", after=True)),
    "serve-admin-sync-repack": KillPoint("serve", True, Stop("repack")),
}


@dataclass
class Site:
    tmp: Path
    upstream: Upstream
    served: Path  # the bare repository the loopback upstream serves
    server: HTTPUpstreamServer
    config_path: Path

    @property
    def mirror(self) -> Path:
        return self.tmp / "mirrors" / "alpha.git"

    @property
    def baked(self) -> Path:
        return self.tmp / "baked"

    def advance(self) -> None:
        """A new commit upstream (so a sync has something to fetch)."""
        self.upstream.commit("moved on")
        git(
            "--git-dir",
            str(self.served),
            "fetch",
            "-q",
            str(self.upstream.path),
            "+refs/heads/*:refs/heads/*",
        )

    def wanted_refs(self) -> dict[str, str]:
        return self.upstream.refs("refs/heads", "refs/tags")

    def env(self, path: str | None = None) -> dict[str, str]:
        return {**os.environ, "PATH": path or os.environ["PATH"], "CCCATALOG_ADMIN_TOKEN": ADMIN}

    def argv(self, command: str) -> list[str]:
        base = [sys.executable, "-m", "cccatalog", command, "-c", str(self.config_path)]
        if command == "sync":
            return [*base, "--no-images", "--json"]
        return [*base, "--dest", str(self.baked), "--json"]


@pytest.fixture
def site(make_upstream: MakeUpstream, tmp_path: Path) -> Iterator[Site]:
    up = make_upstream("alpha")
    served = tmp_path / "served" / "alpha"
    git("clone", "-q", "--bare", str(up.path), str(served))
    with http_upstream(tmp_path / "served") as server:
        config_path = tmp_path / "config.yaml"
        config_path.write_text(
            "git:\n  enabled: true\n  data_dir: mirrors\n  lock_timeout_seconds: 30\n"
            "state:\n  path: state/state.db\n"
            "sources:\n  - name: test\n    type: static\n    codecollections:\n"
            f"      - slug: alpha\n        git_url: {server.repo_url('alpha')}\n"
        )
        yield Site(tmp_path, up, served, server, config_path)


def complete_run(site: Site, command: str) -> None:
    """Run `command` to its end with the real git; it must succeed."""
    if command == "serve":
        with serve_process(site.config_path, env=site.env()) as (_proc, url):
            answer = httpx.post(
                f"{url}/api/v1/admin/sync-git?wait=true",
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=60,
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["errors"] == [], answer.text
        return
    done = subprocess.run(site.argv(command), env=site.env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@contextmanager
def started(site: Site, point: KillPoint, stand_in: StandIn | None) -> Iterator[subprocess.Popen[Any]]:
    """The command of `point`, started; for serve, its admin sync-git too."""
    env = site.env(stand_in.path_env() if stand_in else None)
    if point.command != "serve":
        proc = subprocess.Popen(
            site.argv(point.command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        return
    with serve_process(site.config_path, env=env) as (serve, url):
        answer = httpx.post(
            f"{url}/api/v1/admin/sync-git", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
        )
        assert answer.status_code == 202, answer.text
        yield serve


def wait_for_point(site: Site, stand_in: StandIn | None, proc: subprocess.Popen[Any]) -> None:
    def there() -> bool:
        return stand_in.reached() if stand_in else site.server.held.is_set()

    assert wait_until(lambda: there() or proc.poll() is not None, 60), "the run never got there"
    assert there(), f"the run ended (exit {proc.returncode}) before the kill point"


def kill_and_check_nothing_survives(proc: subprocess.Popen[Any], watch: RunWatch, signum: int) -> None:
    seen = watch.samples
    assert wait_until(lambda: watch.samples > seen + 3, 10)  # the run as it is at the point, sampled
    assert len(watch.seen) > 1, "no child of the run was seen"
    proc.send_signal(signum)
    proc.wait(30)
    name = signal.Signals(signum).name
    try:
        wait_until(
            lambda: not watch.survivors(), SURVIVOR_SECONDS, what=f"the run's children to end after {name}"
        )
    except AssertionError:
        raise AssertionError(f"left running after {name}: {watch.describe(watch.survivors())}") from None


def served_refs(site: Site) -> dict[str, str] | None:
    """What serve answers for alpha: None for 404, else the refs a client sees."""
    with running_server(load_config(site.config_path)) as server:
        url = f"{server.url}/git/alpha.git"
        status = httpx.get(f"{url}/info/refs?service=git-upload-pack", timeout=30).status_code
        if status == 404:
            return None
        assert status == 200, status
        out = git("ls-remote", url)
    pairs = (line.split("\t") for line in out.splitlines())
    return {name: sha for sha, name in pairs if name != "HEAD" and not name.endswith("^{}")}


def assert_maintained(repo: Path) -> None:
    packs = sorted(p.name for p in (repo / "objects" / "pack").iterdir())
    assert len([p for p in packs if p.endswith(".pack")]) == 1, packs
    assert any(p.endswith(".bitmap") for p in packs), packs
    assert not [p for p in packs if p.startswith(("tmp_", ".tmp-"))], packs
    assert (repo / "objects" / "info" / "commit-graph").exists()
    assert sorted(repo.rglob("*.lock")) == []
    info_refs = (repo / "info" / "refs").read_text()
    for name, sha in mirror_refs(repo).items():
        assert f"{sha}\t{name}" in info_refs, name
    git("--git-dir", str(repo), "fsck", "--no-progress", "--no-dangling")


@pytest.mark.parametrize("name", list(KILL_POINTS))
def test_sigkill_anywhere_leaves_no_process_no_half_mirror_and_the_next_run_finishes(
    site: Site, tmp_path: Path, name: str
) -> None:
    check_kill(site, tmp_path, KILL_POINTS[name], signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(
    "name", ["sync-clone-fetch", "sync-update-fetch", "sync-update-repack", "bake-clone-fetch"]
)
def test_sigterm_and_sigint_end_the_run_and_its_git(
    site: Site, tmp_path: Path, name: str, signum: int
) -> None:
    check_kill(site, tmp_path, KILL_POINTS[name], signum)


def check_kill(site: Site, tmp_path: Path, point: KillPoint, signum: int) -> int:
    """Kill the run at `point` with `signum`, check what is left, run it again; returns the exit code
    of the killed run."""
    if point.behind:
        complete_run(site, "sync" if point.command == "serve" else point.command)
        site.advance()
    old = mirror_refs(site.mirror) if site.mirror.exists() else None
    if isinstance(point.how, Hold):
        site.server.behaviours["alpha"] = Behaviour(hold=point.how.stage)
        stand_in = None
    else:
        stand_in = stopping_git(
            tmp_path, point.how.subcommand, after=point.how.after, only_in=point.how.only_in
        )

    with started(site, point, stand_in) as proc, watching(proc.pid) as watch:
        wait_for_point(site, stand_in, proc)
        kill_and_check_nothing_survives(proc, watch, signum)
        code = proc.returncode
    site.server.release.set()
    site.server.behaviours.clear()

    if point.command == "bake":
        baked = site.baked / "alpha.git"
        manifest = site.baked / "manifest.json"
        assert not manifest.exists() or baked.exists()
        if baked.exists():
            git("--git-dir", str(baked), "fsck", "--no-progress", "--no-dangling")
    else:
        assert served_refs(site) in (old, site.wanted_refs()), "serve answered a half-made mirror"
        if site.mirror.exists():
            git("--git-dir", str(site.mirror), "fsck", "--no-progress", "--no-dangling")

    complete_run(site, point.command)

    repo = site.baked / "alpha.git" if point.command == "bake" else site.mirror
    assert mirror_refs(repo) == site.wanted_refs()
    assert_maintained(repo)
    work = Layout(repo.parent).work_dir
    assert not (work / "owed" / "alpha").exists()
    assert not list((work / "tmp").glob("*")) if (work / "tmp").exists() else True
    if point.command == "bake":
        assert (site.baked / "manifest.json").is_file()
        return code
    with Store.open(site.tmp / "state" / "state.db") as store:
        status = store.get_mirror("alpha")
    assert status is not None
    assert status.last_error is None, status.last_error
    assert status.head_commit == site.upstream.sha("main")
    return code


def test_sigkill_of_serve_mid_clone_leaves_no_backend_running(site: Site, tmp_path: Path) -> None:
    """A client that stops reading holds the backend mid-pack; serve killed then leaves nothing."""
    add_random_blobs(site.upstream, megabytes=6)
    git("--git-dir", str(site.served), "fetch", "-q", str(site.upstream.path), "+refs/heads/*:refs/heads/*")
    complete_run(site, "sync")
    head = site.upstream.sha("main")
    body = (
        pkt_line(b"command=fetch\n")
        + b"0001"
        + pkt_line(f"want {head}\n".encode())
        + pkt_line(b"no-progress\n")
        + pkt_line(b"done\n")
        + b"0000"
    )

    with serve_process(site.config_path, env=site.env()) as (serve, url), watching(serve.pid) as watch:
        host, port = url.removeprefix("http://").split(":")
        client = socket.create_connection((host, int(port)))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(
            b"POST /git/alpha.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-git-upload-pack-request\r\nGit-Protocol: version=2\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

        def backend_running() -> bool:
            return any(
                b"pack-objects" in image.cmdline
                for seen in watch.seen.values()
                for image in seen.images.values()
            )

        assert wait_until(backend_running, 30), watch.describe(watch.survivors())
        kill_and_check_nothing_survives(serve, watch, signal.SIGKILL)
        client.close()

    complete_run(site, "serve")
    assert served_refs(site) == site.wanted_refs()


def test_a_sync_killed_between_fetch_and_maintenance_leaves_the_maintenance_to_the_next_sync(
    site: Site, tmp_path: Path
) -> None:
    complete_run(site, "sync")
    site.advance()
    stand_in = stopping_git(tmp_path, "fetch", after=True)
    proc = subprocess.Popen(site.argv("sync"), env=site.env(stand_in.path_env()), stdout=subprocess.PIPE)
    try:
        assert wait_until(lambda: stand_in.reached() or proc.poll() is not None, 60)
        assert stand_in.reached()
        proc.kill()
        proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stand_in.pid(), signal.SIGKILL)
    # the fetch had finished: the refs look up to date, the new objects sit in a pack of their own
    assert mirror_refs(site.mirror) == site.wanted_refs()
    assert len(list((site.mirror / "objects" / "pack").glob("*.pack"))) == 2

    done = subprocess.run(site.argv("sync"), env=site.env(), capture_output=True, text=True, check=True)

    assert [r["action"] for r in json.loads(done.stdout)["repos"]] == ["unchanged"]
    assert_maintained(site.mirror)


def test_no_git_starts_once_the_process_is_stopping(tmp_path: Path) -> None:
    children = ChildGroups()
    runner = Git(redactor=Redactor(), children=children)
    assert runner.run(["--version"]).returncode == 0
    children.terminate_all("SIGTERM")
    with pytest.raises(GitError, match=r"git init not started: cccatalog is stopping \(SIGTERM\)"):
        runner.run(["init", "-q", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
    assert children.live() == ()
