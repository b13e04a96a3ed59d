"""`serve` against real clients on a loopback port: git CLI (v0, v2, shallow, partial, huge negotiations),
libgit2, Dulwich, refused pushes, and a server running as a uid that does not own the mirrors.
"""

from __future__ import annotations

import gzip
import io
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from cccatalog.config import Config
from cccatalog.server.cgi import BackendOutcome, CGIRequest, HttpBackend, ResponseSink
from tests.conftest import MakeConfig
from tests.gitfixtures import GIT_ENV, Upstream, git, mirror_refs
from tests.servefixtures import running_server, serve_process, synced_config

MakeUpstream = Callable[[str], Upstream]


def run_git(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """git as a user runs it; stderr kept for traces and error messages."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def rev(repo: Path, spec: str) -> str:
    return run_git("rev-parse", spec, cwd=repo).stdout.strip()


@dataclass(frozen=True)
class Served:
    base_url: str
    upstream: Upstream
    config_path: Path
    config: Config

    @property
    def url(self) -> str:
        return f"{self.base_url}{self.config.git.mount_path}/alpha.git"

    @property
    def mirror(self) -> Path:
        return self.config.git.data_dir / "alpha.git"


@contextmanager
def serve_alpha(
    make_upstream: MakeUpstream,
    write_config: MakeConfig,
    *,
    backend: HttpBackend | None = None,
    **settings: Any,
) -> Iterator[Served]:
    """Upstream `alpha` (with a GitHub-style refs/pull/1/head), synced, served in-process."""
    up = make_upstream("alpha")
    git("update-ref", "refs/pull/1/head", "HEAD", cwd=up.path)
    path = write_config({"alpha": up.url})
    config = synced_config(path)
    with running_server(config, backend=backend, **settings) as server:
        yield Served(server.url, up, path, config)


# The two ways a pack leaves: through the pack cache (the default), and with the cache off, the fetch's
# last request handed to git with the socket as its stdout (server/handoff.py).
ANSWER_PATHS: dict[str, dict[str, Any]] = {"pack-cache": {}, "hand-off": {"pack_cache_mb": 0}}


@pytest.fixture(params=list(ANSWER_PATHS))
def served_alpha(
    request: pytest.FixtureRequest, make_upstream: MakeUpstream, write_config: MakeConfig
) -> Iterator[Served]:
    with serve_alpha(make_upstream, write_config, **ANSWER_PATHS[request.param]) as served:
        yield served


def fast_import_chain(
    repo: Path, *, count: int, branch: str, start: str, first_epoch: int, tag_prefix: str | None = None
) -> None:
    """`count` commits on `branch` on top of `start`, one second apart, each tagged when asked.

    fast-import writes thousands of commits in well under a second; `git commit` would take minutes.
    """
    lines: list[str] = []
    for i in range(1, count + 1):
        message = f"{branch} {i}\n"
        lines += [
            f"commit refs/heads/{branch}",
            f"mark :{i}",
            f"committer Test <test@example.invalid> {first_epoch + i} +0000",
            f"data {len(message)}",
            message,
        ]
        if i == 1:
            lines.append(f"from {start}")
        lines.append("")
    if tag_prefix:
        for i in range(1, count + 1):
            lines += [f"reset refs/tags/{tag_prefix}{i:05d}", f"from :{i}", ""]
    subprocess.run(
        ["git", "fast-import", "--quiet"],
        cwd=repo,
        input="\n".join(lines).encode(),
        env={**os.environ, **GIT_ENV},
        check=True,
        capture_output=True,
    )


# 1. protocol v0 and v2


@pytest.mark.parametrize("version", ["0", "2"])
def test_git_clone_checks_out_main_with_tags_over_protocol(
    served_alpha: Served, tmp_path: Path, version: str
) -> None:
    dest = tmp_path / "clone"

    result = run_git(
        "-c",
        f"protocol.version={version}",
        "clone",
        served_alpha.url,
        str(dest),
        env={"GIT_TRACE_PACKET": "1"},
    )

    assert rev(dest, "HEAD") == served_alpha.upstream.sha("main")
    assert run_git("tag", "--list", cwd=dest).stdout.split() == ["v1.0.0"]
    assert rev(dest, "v1.0.0^{commit}") == served_alpha.upstream.sha("v1.0.0^{commit}")
    spoke_v2 = "version 2" in result.stderr and "command=ls-refs" in result.stderr
    assert spoke_v2 == (version == "2"), result.stderr[-2000:]


# 2. the platform's fetcher


def test_shallow_fetch_depth_2_with_tags_brings_new_commits_and_tags_and_stays_shallow(
    served_alpha: Served, tmp_path: Path
) -> None:
    up, dest = served_alpha.upstream, tmp_path / "clone"
    run_git("clone", "--depth=1", served_alpha.url, str(dest))
    assert run_git("rev-parse", "--is-shallow-repository", cwd=dest).stdout.strip() == "true"
    up.commit("second")
    third = up.commit("third")
    git("tag", "-a", "v1.1.0", "-m", "v1.1.0", cwd=up.path)
    synced_config(served_alpha.config_path)

    run_git("fetch", "--depth=2", "--tags", cwd=dest)

    assert rev(dest, "origin/main") == third
    assert rev(dest, "v1.1.0^{commit}") == third
    assert run_git("rev-parse", "--is-shallow-repository", cwd=dest).stdout.strip() == "true"
    assert run_git("rev-list", "--count", "origin/main", cwd=dest).stdout.strip() == "2"


# 3. ls-remote


@pytest.mark.parametrize("version", ["0", "2"])
def test_ls_remote_without_dot_git_lists_head_branches_and_tags_but_no_pull_refs(
    served_alpha: Served, version: str
) -> None:
    up = served_alpha.upstream
    assert "refs/pull/1/head" in up.refs()
    url = served_alpha.url.removesuffix(".git")

    out = run_git("-c", f"protocol.version={version}", "ls-remote", url).stdout

    refs = {name: sha for sha, name in (line.split("\t") for line in out.splitlines())}
    assert refs == {
        "HEAD": up.sha("main"),
        "refs/heads/main": up.sha("main"),
        "refs/heads/develop": up.sha("develop"),
        "refs/tags/v1.0.0": up.sha("v1.0.0"),
        "refs/tags/v1.0.0^{}": up.sha("v1.0.0^{commit}"),
    }


# 4. partial clone


def test_blobless_partial_clone_fetches_blobs_on_demand_at_checkout(
    served_alpha: Served, tmp_path: Path
) -> None:
    dest = tmp_path / "clone"

    run_git("clone", "--filter=blob:none", "--no-checkout", served_alpha.url, str(dest))

    assert run_git("config", "remote.origin.promisor", cwd=dest).stdout.strip() == "true"
    assert run_git("config", "remote.origin.partialclonefilter", cwd=dest).stdout.strip() == "blob:none"
    objects = run_git("rev-list", "--objects", "--missing=print", "HEAD", cwd=dest).stdout.splitlines()
    assert [o for o in objects if o.startswith("?")], "the server sent blobs despite --filter=blob:none"

    run_git("checkout", "main", cwd=dest)  # lazily fetches the missing blobs from the server

    assert (dest / "file1.txt").read_text() == (served_alpha.upstream.path / "file1.txt").read_text()
    objects = run_git("rev-list", "--objects", "--missing=print", "HEAD", cwd=dest).stdout.splitlines()
    assert not [o for o in objects if o.startswith("?")]


# 5. a negotiation over 1 MiB: chunked request bodies; smaller rounds gzipped


class RecordingBackend(HttpBackend):
    """The real backend, noting what each request handed to git."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[CGIRequest] = []

    def run(
        self,
        req: CGIRequest,
        body: IO[bytes] | None,
        sink: ResponseSink,
        *,
        project_root: Path,
        timeout: float,
    ) -> BackendOutcome:
        self.requests.append(req)
        return super().run(req, body, sink, project_root=project_root, timeout=timeout)


# git buffers a request up to http.postBuffer (1 MiB) and sends anything bigger chunked; smaller
# requests over 1 KiB it gzips. 18000 wants (~50 bytes each) plus growing rounds of 16, 32, ... have
# lines cross that line mid-negotiation, so one fetch sends both kinds.
NEW_UPSTREAM_TAGS = 18000
LOCAL_COMMITS = 10000


@pytest.mark.slow
def test_fetch_whose_negotiation_exceeds_1_mib_succeeds_with_chunked_and_gzipped_bodies(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    backend = RecordingBackend()
    with serve_alpha(make_upstream, write_config, backend=backend) as served:
        up, dest = served.upstream, tmp_path / "clone"
        run_git("clone", served.url, str(dest))
        now = int(time.time())
        # Local work dated after everything the server has: sent as "have" first, never acknowledged.
        fast_import_chain(dest, count=LOCAL_COMMITS, branch="local", start="HEAD", first_epoch=now + 10**6)
        fast_import_chain(
            up.path, count=NEW_UPSTREAM_TAGS, branch="main", start="main^0", first_epoch=now, tag_prefix="t"
        )
        synced_config(served.config_path)
        backend.requests.clear()

        result = run_git(
            "-c",
            "protocol.version=2",
            "fetch",
            "--tags",
            "origin",
            cwd=dest,
            env={"GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"},
        )

        assert rev(dest, "origin/main") == up.sha("main")
        assert rev(dest, f"t{NEW_UPSTREAM_TAGS:05d}") == up.sha("main")
        assert len(run_git("tag", "--list", "t*", cwd=dest).stdout.split()) == NEW_UPSTREAM_TAGS
        sent = [line for line in result.stderr.splitlines() if "=> Send header:" in line]
        assert any(line.endswith("Transfer-Encoding: chunked") for line in sent), "no chunked request"
        assert any(line.endswith("Content-Encoding: gzip") for line in sent), "no gzipped request"
        posts = [r for r in backend.requests if r.method == "POST"]
        assert max(r.content_length or 0 for r in posts) > 1024 * 1024
        assert any(r.content_encoding == "gzip" for r in posts)


def test_chunked_and_gzipped_body_from_a_plain_http_client_gets_a_pack(served_alpha: Served) -> None:
    main = served_alpha.upstream.sha("main")
    request = f"0032want {main}\n".encode() + b"0000" + b"0009done\n"
    compressed = gzip.compress(request)

    def body() -> Iterator[bytes]:  # a generator: httpx sends it with Transfer-Encoding: chunked
        for i in range(0, len(compressed), 7):
            yield compressed[i : i + 7]

    response = httpx.post(
        f"{served_alpha.url}/git-upload-pack",
        content=body(),
        headers={"Content-Type": "application/x-git-upload-pack-request", "Content-Encoding": "gzip"},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    assert response.content.startswith(b"0008NAK\n")
    assert b"PACK" in response.content


# 6. other clients


def clone_with_pygit2(url: str, dest: Path) -> str:
    import pygit2

    repo = pygit2.clone_repository(url, str(dest))
    try:
        return str(repo.head.target)
    finally:
        repo.free()


def clone_with_dulwich(url: str, dest: Path) -> str:
    from dulwich import porcelain

    repo = porcelain.clone(url, str(dest), errstream=io.BytesIO())
    try:
        return bytes(repo.head()).decode()
    finally:
        repo.close()


@pytest.mark.parametrize("clone", [clone_with_pygit2, clone_with_dulwich], ids=["libgit2", "dulwich"])
def test_other_git_clients_clone_main(
    served_alpha: Served, tmp_path: Path, clone: Callable[[str, Path], str]
) -> None:
    dest = tmp_path / "clone"

    head = clone(served_alpha.url, dest)

    assert head == served_alpha.upstream.sha("main")
    assert (dest / "file1.txt").read_text() == (served_alpha.upstream.path / "file1.txt").read_text()


# 7. pushes are refused


@pytest.fixture(params=["in-process", "process-with-REMOTE_USER"])
def push_target(request: pytest.FixtureRequest, served_alpha: Served) -> Iterator[str]:
    """Base URL of a server for alpha: the in-process one, or `cccatalog serve` with REMOTE_USER set."""
    if request.param == "in-process":
        yield served_alpha.base_url
        return
    with serve_process(served_alpha.config_path, env={"REMOTE_USER": "attacker"}) as (_proc, url):
        yield url


def test_push_is_refused_and_mirror_refs_stay_unchanged(
    served_alpha: Served, push_target: str, tmp_path: Path
) -> None:
    url = f"{push_target}/git/alpha.git"
    dest = tmp_path / "clone"
    run_git("clone", url, str(dest))
    (dest / "evil.txt").write_text("pwned\n")
    run_git("add", "evil.txt", cwd=dest)
    run_git("commit", "-q", "-m", "evil", cwd=dest)
    before = mirror_refs(served_alpha.mirror)

    pushes = [
        run_git("push", url, "HEAD:refs/heads/main", cwd=dest, check=False),
        run_git("push", url, "HEAD:refs/heads/evil", cwd=dest, check=False),
        run_git("push", "--delete", url, "develop", cwd=dest, check=False),
    ]

    for result in pushes:
        assert result.returncode != 0
        assert "403" in result.stderr, result.stderr
    assert mirror_refs(served_alpha.mirror) == before


def test_receive_pack_routes_answer_403_without_touching_the_mirror(
    served_alpha: Served, push_target: str
) -> None:
    url = f"{push_target}/git/alpha.git"
    before = mirror_refs(served_alpha.mirror)
    with httpx.Client(timeout=10) as client:
        advertise = client.get(f"{url}/info/refs", params={"service": "git-receive-pack"})
        receive = client.post(
            f"{url}/git-receive-pack",
            content=b"0000",
            headers={"Content-Type": "application/x-git-receive-pack-request"},
        )
    assert advertise.status_code == 403
    assert b"report-status" not in advertise.content
    assert receive.status_code in (403, 404)
    assert mirror_refs(served_alpha.mirror) == before


# 8. a serving uid that does not own the mirrors

# `serve_process(user=...)` execs the interpreter as that user, which fails where Python lives under a
# 0700 /root (pyenv). So import as root, then drop to the user before `serve` reads its config, binds,
# checks the mirrors or spawns a single git process: everything under test runs as that uid. Every
# module of cccatalog is imported first: the user may not read the checkout (a private clone).
_SERVE_AS = """
import contextlib, encodings.idna, importlib, io, os, pkgutil, pwd, sys
import cccatalog
from cccatalog.cli import run
for module in pkgutil.walk_packages(cccatalog.__path__, "cccatalog."):
    importlib.import_module(module.name)
# Load now, while the interpreter is readable, what the CLI and socket.getfqdn import lazily.
with contextlib.redirect_stdout(io.StringIO()):
    run(["serve", "--help"])
user = pwd.getpwnam(sys.argv[1])
os.setgroups([])
os.setgid(user.pw_gid)
os.setuid(user.pw_uid)
sys.exit(run(["serve", "-c", sys.argv[2], "--host", "127.0.0.1", "--port", sys.argv[3]]))
"""


@contextmanager
def serve_as(user: str, config_path: Path) -> Iterator[str]:
    """`cccatalog serve` running as `user`; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE_AS, user, str(config_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"serve as {user} did not start: {proc.communicate()[1]}")
        assert Path(f"/proc/{proc.pid}").stat().st_uid == pwd.getpwnam(user).pw_uid
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


@contextmanager
def world_readable_dir() -> Iterator[Path]:
    """A 0755 directory outside pytest's 0700 tmp tree, so another uid can reach what is inside."""
    path = Path(tempfile.mkdtemp(prefix="cccatalog-nobody-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_readable_by_all(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            (Path(dirpath) / name).chmod(0o755)
        for name in filenames:
            path = Path(dirpath) / name
            path.chmod(path.stat().st_mode | 0o444)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own the mirrors and to serve as nobody")
@pytest.mark.parametrize(
    "as_published",
    [
        pytest.param(False, id="mirrors-made-world-readable"),
        pytest.param(True, id="mirrors-as-sync-published-them"),
    ],
)
def test_server_running_as_nobody_serves_root_owned_mirrors(tmp_path: Path, as_published: bool) -> None:
    with world_readable_dir() as base:
        up = Upstream(base / "upstreams" / "alpha")
        config_path = base / "config.yaml"
        config_path.write_text(
            "git:\n  enabled: true\n  data_dir: mirrors\n"
            "sources:\n  - name: test\n    type: static\n    codecollections:\n"
            f"      - slug: alpha\n        git_url: {up.url}\n"
        )
        config = synced_config(config_path)
        mirror = config.git.data_dir / "alpha.git"
        assert mirror.stat().st_uid == 0
        if not as_published:
            make_readable_by_all(config.git.data_dir)
        dest = tmp_path / "clone"

        with serve_as("nobody", config_path) as url:
            result = run_git("clone", f"{url}/git/alpha.git", str(dest), check=False)

        assert result.returncode == 0, result.stderr
        assert rev(dest, "HEAD") == up.sha("main")
