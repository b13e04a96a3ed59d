"""Credentials against hostile and broken upstreams: a token goes to the configured origin and nowhere
else — not to the host a redirect points to, not into argv, child environments, logs, state, the API,
the bake manifest or any message. Real git against loopback HTTP upstreams throughout."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from cccatalog.catalog.store import Store
from cccatalog.config import Config, load_config
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import is_complete
from cccatalog.gitmirror.sync import Action, MirrorSyncer, RepoResult, SyncOptions, plan_sync
from cccatalog.jobs import recorder
from cccatalog.redact import Redactor
from tests.conftest import MakeConfig
from tests.gitfixtures import Behaviour, HTTPUpstreamServer, Upstream, git, http_upstream, mirror_refs
from tests.procfixtures import RunWatch, watching
from tests.servefixtures import serve_process
from tests.waiting import wait_until

pytestmark = [pytest.mark.security, pytest.mark.slow]

MakeUpstream = Callable[[str], Upstream]
TOKEN = "ghp_" + "RedirectCanary0123456789" * 2
HEADER = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
AUTH = "  auth:\n    token_env: TEST_TOKEN\n"


def serve_bare(up: Upstream, root: Path, name: str) -> None:
    git("clone", "-q", "--bare", str(up.path), str(root / name))


def sync(config: Config, *, token: bool = True) -> RepoResult:
    env = {**os.environ, "TEST_TOKEN": TOKEN} if token else dict(os.environ)
    with Store.open(config.state.path) as store:
        syncer = MirrorSyncer(
            git=Git(redactor=Redactor()),
            layout=Layout(config.git.data_dir),
            options=SyncOptions.from_config(config),
            environ=env,
            record=recorder(store),
        )
        [result] = syncer.run(plan_sync(config))
    return result


def authorized(server: HTTPUpstreamServer) -> list[str]:
    """The requests `server` received that carried the canary, as `METHOD path`."""
    return [
        f"{r.method} {r.path}" for r in server.requests if r.authorization and TOKEN_B64 in r.authorization
    ]


TOKEN_B64 = HEADER.split()[1]


@pytest.mark.parametrize(
    ("settings", "leaks"),
    [
        pytest.param({}, True, id="default"),
        pytest.param({"http.followRedirects": "initial"}, True, id="initial"),
        pytest.param({"http.followRedirects": "true"}, True, id="true"),
        pytest.param({"http.followRedirects": "false"}, False, id="false"),
    ],
)
def test_git_sends_an_origin_scoped_header_to_where_a_redirect_points_unless_told_not_to_follow(
    make_upstream: MakeUpstream, tmp_path: Path, settings: dict[str, str], leaks: bool
) -> None:
    """Why sync refuses redirects while it holds credentials: git 2.39 matches `http.<url>.*` against
    the configured URL once, and sends the header with every request after the redirect too."""
    serve_bare(make_upstream("alpha"), tmp_path / "other", "alpha")
    with http_upstream(tmp_path / "empty") as configured, http_upstream(tmp_path / "other") as other:
        configured.behaviours["alpha"] = Behaviour(redirect_to=other.repo_url("alpha"))
        scope = f"{configured.url}/"
        config = {f"http.{scope}.extraHeader": f"Authorization: {HEADER}", **settings}
        result = Git(redactor=Redactor()).run(
            ["ls-remote", configured.repo_url("alpha")], config=config, check=False, timeout=30
        )
    assert (result.returncode == 0) is leaks, result.stderr
    assert authorized(configured) == ["GET /alpha/info/refs?service=git-upload-pack"]
    assert bool(authorized(other)) is leaks, other.requests


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["other-port", "other-host-name"])
@pytest.mark.parametrize("existing", [False, True], ids=["first-clone", "update"])
def test_sync_never_sends_the_token_to_another_origin_a_redirect_points_to(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path, host: str, existing: bool
) -> None:
    up = make_upstream("alpha")
    serve_bare(up, tmp_path / "served", "alpha")
    serve_bare(up, tmp_path / "other", "alpha")
    with http_upstream(tmp_path / "served") as configured, http_upstream(tmp_path / "other") as other:
        config = load_config(write_config({"alpha": configured.repo_url("alpha")}, git_extra=AUTH))
        if existing:
            assert sync(config).action is Action.CLONED
        before = mirror_refs(config.git.data_dir / "alpha.git") if existing else None
        target = other.repo_url("alpha", host=host)
        configured.behaviours["alpha"] = Behaviour(redirect_to=target)

        result = sync(config)

    assert result.action is Action.FAILED
    error = result.error or ""
    assert f"redirected to {target}/info/refs" in error, error
    assert f"another origin than {configured.url}" in error, error
    assert "set git_url to the new location" in error, error
    assert other.requests == [], "the other origin was contacted"
    assert TOKEN not in error
    assert TOKEN_B64 not in error
    repo = config.git.data_dir / "alpha.git"
    if existing:
        assert mirror_refs(repo) == before, "the mirror was changed by a refused redirect"
    else:
        assert not repo.exists()
    with Store.open(config.state.path) as store:
        status = store.get_mirror("alpha")
    assert status is not None
    assert status.last_error == error


def test_a_same_origin_redirect_is_followed_with_the_token_and_the_result_says_where_to(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    serve_bare(up, tmp_path / "served", "renamed")
    with http_upstream(tmp_path / "served", required_authorization=HEADER) as server:
        server.behaviours["alpha"] = Behaviour(redirect_to=server.repo_url("renamed"))
        config = load_config(write_config({"alpha": server.repo_url("alpha")}, git_extra=AUTH))

        first = sync(config)
        up.commit("second")
        git("--git-dir", str(tmp_path / "served" / "renamed"), "fetch", "-q", str(up.path), "+main:main")
        second = sync(config)

    for result in (first, second):
        assert not result.failed, result.error
        assert result.note is not None
        assert f"redirected to {server.repo_url('renamed')} (same origin" in result.note
        assert "set git_url to the new location" in result.note
    assert first.action is Action.CLONED
    assert second.action is Action.UPDATED
    assert mirror_refs(config.git.data_dir / "alpha.git") == up.refs("refs/heads", "refs/tags")
    # the repo config still names the configured upstream: the redirect is followed per run only
    assert git("--git-dir", str(config.git.data_dir / "alpha.git"), "config", "remote.origin.url") == (
        server.repo_url("alpha")
    )


def test_a_redirect_to_a_same_origin_address_that_is_no_repository_is_refused(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    with http_upstream(tmp_path / "served") as server:
        server.behaviours["alpha"] = Behaviour(redirect_to=f"{server.url}/login?next=")
        config = load_config(write_config({"alpha": server.repo_url("alpha")}, git_extra=AUTH))
        result = sync(config)
    assert result.action is Action.FAILED
    assert f"redirected to {server.url}/login" in (result.error or "")
    assert "not a git repository's address" in (result.error or "")


def test_an_anonymous_upstream_follows_a_redirect_anywhere_and_the_result_says_so(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    serve_bare(up, tmp_path / "other", "alpha")
    with http_upstream(tmp_path / "served") as configured, http_upstream(tmp_path / "other") as other:
        configured.behaviours["alpha"] = Behaviour(redirect_to=other.repo_url("alpha", host="localhost"))
        config = load_config(write_config({"alpha": configured.repo_url("alpha")}))
        result = sync(config, token=False)
    assert result.action is Action.CLONED, result.error
    assert result.note is not None
    assert f"redirected to {other.repo_url('alpha', host='localhost')}/" in result.note
    assert is_complete(Git(redactor=Redactor()), config.git.data_dir / "alpha.git")


def test_a_redirect_of_the_fetch_alone_is_refused_with_a_hint(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    """An upstream that lists its refs itself but redirects the pack request: git stops there too."""
    up = make_upstream("alpha")
    serve_bare(up, tmp_path / "served", "alpha")
    with http_upstream(tmp_path / "served") as configured, http_upstream(tmp_path / "served") as other:
        config = load_config(write_config({"alpha": configured.repo_url("alpha")}, git_extra=AUTH))
        assert sync(config).action is Action.CLONED
        up.commit("second")
        git("--git-dir", str(tmp_path / "served" / "alpha"), "fetch", "-q", str(up.path), "+main:main")
        configured.behaviours["alpha"] = Behaviour(redirect_to=other.repo_url("alpha"), redirect_only="fetch")
        result = sync(config)
    assert result.action is Action.FAILED
    assert "answered with a redirect" in (result.error or ""), result.error
    assert "set git_url" in (result.error or "")
    assert other.requests == []


# --- the canary through every path ---------------------------------------------------------------------

CANARY = f"cAnArY{uuid.uuid4().hex}/+x="
CANARY_HEADER = "Basic " + base64.b64encode(f"x-access-token:{CANARY}".encode()).decode()
CANARY_FORMS = {
    "raw": CANARY.encode(),
    "percent-encoded": quote(CANARY, safe="").encode(),
    "base64": base64.b64encode(CANARY.encode()).decode().rstrip("=").encode(),
    "base64 x-access-token": CANARY_HEADER.split()[1].rstrip("=").encode(),
}
ADMIN = "admin-token-for-the-canary-run"
# every way an upstream lets a sync down, one repository each
HOSTILE = ("denied", "broken", "moved", "away", "elsewhere", "cut", "stalled")


def leaks(data: bytes) -> list[str]:
    return [name for name, form in CANARY_FORMS.items() if form in data]


@dataclass
class Zoo:
    configured: HTTPUpstreamServer
    other: HTTPUpstreamServer
    config_path: Path
    env: dict[str, str]

    def write_config(self, *slugs: str) -> None:
        entries = "".join(
            f"      - slug: {s}\n        git_url: {self.configured.repo_url(s)}\n" for s in slugs
        )
        self.config_path.write_text(
            "git:\n"
            "  enabled: true\n"
            "  data_dir: mirrors\n"
            "  parallelism: 8\n"
            "  auth:\n    token_env: CANARY_TOKEN\n"
            "state:\n  path: state/state.db\n"
            "sources:\n  - name: test\n    type: static\n    codecollections:\n"
            f"{entries}"
        )

    def only_the_configured_origin_got_the_canary(self) -> None:
        carried = [r for r in self.configured.requests if r.authorization == CANARY_HEADER]
        assert carried, "the canary was never sent: the test proves nothing"
        for server in (self.configured, self.other):
            for request in server.requests:
                sent = " ".join(f"{k}: {v}" for k, v in request.headers.items()).encode()
                sent += request.path.encode()
                if server is self.other or request.authorization != CANARY_HEADER:
                    assert leaks(sent) == [], f"{server.url} {request.method} {request.path}"


@pytest.fixture
def zoo(make_upstream: MakeUpstream, tmp_path: Path) -> Iterator[Zoo]:
    """A configured upstream that needs the canary token and misbehaves in every way but one (`good`),
    and another origin that serves the same repository to anyone and records what it is sent."""
    up = make_upstream("good")
    serve_bare(up, tmp_path / "served", "good")
    serve_bare(up, tmp_path / "elsewhere", "good")
    with (
        http_upstream(tmp_path / "served", required_authorization=CANARY_HEADER) as configured,
        http_upstream(tmp_path / "elsewhere") as other,
    ):
        configured.behaviours.update(
            denied=Behaviour(status=401),
            broken=Behaviour(status=500),
            moved=Behaviour(redirect_to=configured.repo_url("good")),
            away=Behaviour(redirect_to=other.repo_url("good")),
            elsewhere=Behaviour(redirect_to=other.repo_url("good", host="localhost")),
            cut=Behaviour(serve_as="good", cut_pack=True),
            stalled=Behaviour(serve_as="good", hold="fetch"),
        )
        env = {**os.environ, "CANARY_TOKEN": CANARY, "CCCATALOG_ADMIN_TOKEN": ADMIN}
        zoo = Zoo(configured, other, tmp_path / "config.yaml", env)
        zoo.write_config("good", *HOSTILE)
        yield zoo


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cccatalog", "-vv", *args]


def run_watched(argv: list[str], zoo: Zoo, cwd: Path) -> tuple[subprocess.CompletedProcess[bytes], RunWatch]:
    """Run a command to its end while sampling its processes; the stalled fetch is let go once the
    sampler has seen the run stall on it."""
    proc = subprocess.Popen(argv, env=zoo.env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with watching(proc.pid) as watch:
        release_stall(zoo, watch, alive=lambda: proc.poll() is None)
        out, err = proc.communicate(timeout=90)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), watch


def release_stall(zoo: Zoo, watch: RunWatch, alive: Callable[[], bool]) -> None:
    assert wait_until(lambda: zoo.configured.held.is_set() or not alive(), 60)
    assert zoo.configured.held.is_set(), "the run ended before the stalled fetch arrived"
    seen = watch.samples
    assert wait_until(lambda: watch.samples > seen + 5, 10)
    zoo.configured.release.set()


def check_processes(watch: RunWatch) -> None:
    """No argv held the canary; no child but git had it in its environment (a child not yet past
    its exec still runs our own program, with our memory: it is not judged by its environment)."""
    ours = {
        image.exe for image in watch.seen[next(k for k in watch.seen if k[0] == watch.root)].images.values()
    }
    others = gits = 0
    for key, seen in watch.seen.items():
        for image in seen.images.values():
            assert leaks(image.cmdline) == [], image.cmdline
            if key[0] == watch.root or image.exe in ours:
                continue
            if os.path.basename(image.exe).startswith("git"):
                gits += 1
                continue
            others += 1
            assert leaks(image.environ) == [], f"{image.exe}: {image.cmdline!r}"
    assert gits, "no git process was seen: the sampler proves nothing"
    assert others, "no child other than git was seen: the reaper should have been"


def check_files(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert leaks(path.read_bytes()) == [], path


def test_the_canary_reaches_only_the_configured_origin_through_sync(zoo: Zoo, tmp_path: Path) -> None:
    done, watch = run_watched(cli("sync", "-c", str(zoo.config_path), "--json", "--no-images"), zoo, tmp_path)

    assert done.returncode == 1, done.stderr.decode()
    report = json.loads(done.stdout)
    actions = {r["slug"]: r["action"] for r in report["repos"]}
    assert actions == {
        "good": "cloned",
        "moved": "cloned",
        "stalled": "cloned",
        "denied": "failed",
        "broken": "failed",
        "away": "failed",
        "elsewhere": "failed",
        "cut": "failed",
    }
    assert leaks(done.stdout) == []
    assert leaks(done.stderr) == []
    check_processes(watch)
    check_files(tmp_path / "state", tmp_path / "mirrors")
    api = subprocess.run(
        cli("serve", "-c", str(zoo.config_path), "--get", "/api/v1/git/repos"),
        env=zoo.env,
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert api.returncode == 0, api.stderr
    assert b'"last_sync_error"' in api.stdout
    assert leaks(api.stdout) == []
    assert leaks(api.stderr) == []
    zoo.only_the_configured_origin_got_the_canary()


def test_the_canary_reaches_only_the_configured_origin_through_bake(zoo: Zoo, tmp_path: Path) -> None:
    dest = tmp_path / "baked"
    secret = tmp_path / "token-file"
    secret.write_text(CANARY + "\n")
    zoo.env.pop("CANARY_TOKEN")  # from the BuildKit-style secret file instead
    argv = cli("bake", "-c", str(zoo.config_path), "--dest", str(dest), "--json", "--token-file", str(secret))
    done, watch = run_watched(argv, zoo, tmp_path)

    assert done.returncode == 1, done.stderr.decode()
    assert not (dest / "manifest.json").exists()
    assert leaks(done.stdout) == []
    assert leaks(done.stderr) == []
    check_processes(watch)
    check_files(dest)

    # a bake of the repos that can be had writes a manifest: the canary is not in it either
    zoo.write_config("good", "moved")
    good = subprocess.run(argv, env=zoo.env, cwd=tmp_path, capture_output=True, check=False)
    assert good.returncode == 0, (good.stdout + good.stderr).decode()
    assert (dest / "manifest.json").is_file()
    assert leaks(good.stdout) == []
    assert leaks(good.stderr) == []
    check_files(dest)
    zoo.only_the_configured_origin_got_the_canary()


def test_the_canary_reaches_only_the_configured_origin_through_the_admin_sync(
    zoo: Zoo, tmp_path: Path
) -> None:
    with serve_process(zoo.config_path, env=zoo.env, options=("-vv",)) as (proc, url):
        with watching(proc.pid) as watch, httpx.Client(base_url=url, timeout=90) as client:
            auth = {"Authorization": f"Bearer {ADMIN}"}
            started = client.post("/api/v1/admin/sync-git", headers=auth)
            assert started.status_code == 202, started.text
            release_stall(zoo, watch, alive=lambda: proc.poll() is None)
            job_url = started.json()["url"]
            assert wait_until(lambda: client.get(job_url, headers=auth).json()["state"] != "running", 60)
            answers = [
                client.get(job_url, headers=auth),
                client.get("/api/v1/git/repos"),
                *(client.get(f"/api/v1/git/repos/{slug}") for slug in ("good", *HOSTILE)),
                client.get("/api/v1/catalog/codecollections?only_with_image=false"),
            ]
        proc.send_signal(signal.SIGTERM)
        logs = proc.communicate(timeout=30)
    job = answers[0].json()
    assert job["state"] == "succeeded", job
    assert {e["slug"] for e in job["result"]["errors"]} == {"denied", "broken", "away", "elsewhere", "cut"}
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert leaks(answer.content) == [], answer.request.url
    assert leaks(logs[0].encode()) == []
    assert leaks(logs[1].encode()) == []
    check_processes(watch)
    check_files(tmp_path / "state", tmp_path / "mirrors")
    zoo.only_the_configured_origin_got_the_canary()
