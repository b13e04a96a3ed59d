"""The single binary (built once per session, as the release image builds it: tests/binaryfixtures.py),
used the way an operator uses it: `--version`, a `sync` from a `file://` upstream, `serve` answering
`/healthz` and a real `git clone`, SIGTERM, and `serve --get`. tests/test_binary_tour.py runs the whole
tour with nothing but the binary; benchmarks/startup records its size and start-up time.

Skipped when PyInstaller is not installed (and $CCCATALOG_BINARY names no binary), or with
CCCATALOG_SKIP_BINARY=1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cccatalog import __version__
from tests.binaryfixtures import Binary
from tests.gitfixtures import GIT_ENV, Upstream, git

if os.environ.get("CCCATALOG_SKIP_BINARY") == "1":
    pytest.skip("CCCATALOG_SKIP_BINARY=1: the PyInstaller binary is not built", allow_module_level=True)

# Building takes about a minute on two cores; the first test using the binary pays for it.
pytestmark = [pytest.mark.timeout(900), pytest.mark.binary]


def _env(home: Path) -> dict[str, str]:
    """What an operator's shell would pass: PATH etc., an empty HOME, no git config from the machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCCATALOG_", "CC_CATALOG_"))}
    return {**env, **GIT_ENV, "HOME": str(home)}


def _run(
    binary: Binary, *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary.path), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass(frozen=True)
class Synced:
    config: Path
    data_dir: Path
    upstream: Upstream
    env: dict[str, str]


@pytest.fixture
def synced(binary: Binary, tmp_path: Path) -> Synced:
    """An upstream on disk, a config naming it, and one `sync` by the binary (asserted to succeed)."""
    upstream = Upstream(tmp_path / "upstreams" / "alpha")
    data_dir = tmp_path / "mirrors"
    config = tmp_path / "config.yaml"
    config.write_text(
        "git:\n"
        "  enabled: true\n"
        f"  data_dir: {data_dir}\n"
        "sources:\n"
        "  - name: local\n"
        "    type: static\n"
        "    codecollections:\n"
        "      - slug: alpha\n"
        f"        git_url: {upstream.url}\n"
    )
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = _env(home)
    out = _run(binary, "sync", "--config", str(config), "--json", env=env)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["ok"] is True
    assert [(r["slug"], r["action"]) for r in summary["repos"]] == [("alpha", "cloned")]
    return Synced(config, data_dir, upstream, env)


def test_version_and_help(binary: Binary, tmp_path: Path) -> None:
    env = _env(tmp_path)
    out = _run(binary, "--version", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"cccatalog {__version__}", "build: single binary", "postgres: yes"]
    # --help goes through Typer's Rich renderer, which is imported lazily.
    out = _run(binary, "serve", "--help", env=env)
    assert out.returncode == 0, out.stderr
    assert "Example: cccatalog serve" in out.stdout


def test_usage_error_exits_2(binary: Binary, tmp_path: Path) -> None:
    out = _run(binary, "sync", "--config", str(tmp_path / "missing.yaml"), env=_env(tmp_path))
    assert out.returncode == 2
    assert "missing.yaml" in out.stderr


def test_sync_publishes_the_mirror(synced: Synced) -> None:
    mirror = synced.data_dir / "alpha.git"
    assert mirror.is_dir()
    assert git("--git-dir", str(mirror), "rev-parse", "refs/heads/main") == synced.upstream.sha("main")
    assert git("--git-dir", str(mirror), "rev-parse", "v1.0.0^{commit}") == synced.upstream.sha(
        "v1.0.0^{commit}"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serving(binary: Binary, synced: Synced, logs: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    argv = [str(binary.path), "serve", "-c", str(synced.config), "--host", "127.0.0.1", "--port", str(port)]
    with (logs / "serve.out").open("wb") as stdout, (logs / "serve.err").open("wb") as stderr:
        proc = subprocess.Popen(argv, env=synced.env, stdout=stdout, stderr=stderr, cwd="/")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30  # a one-file binary unpacks itself first
        while True:
            assert proc.poll() is None, f"serve exited early: {(logs / 'serve.err').read_text()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (
                f"serve never became healthy: {(logs / 'serve.err').read_text()}"
            )
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_answers_a_git_clone_and_stops_on_sigterm(
    binary: Binary, synced: Synced, tmp_path: Path
) -> None:
    with _serving(binary, synced, tmp_path) as (proc, url):
        health = httpx.get(f"{url}/healthz", timeout=5)
        assert health.json() == {"status": "ok"}
        clone = tmp_path / "clone"
        git("clone", "-q", f"{url}/git/alpha.git", str(clone), env={"HOME": synced.env["HOME"]})
        assert git("rev-parse", "HEAD", cwd=clone) == synced.upstream.sha("main")
        assert "v1.0.0" in git("tag", "--list", cwd=clone).split()
        shallow = tmp_path / "shallow"
        git("clone", "-q", "--depth=2", f"{url}/git/alpha", str(shallow), env={"HOME": synced.env["HOME"]})
        assert git("rev-parse", "HEAD", cwd=shallow) == synced.upstream.sha("main")
        # the status page and prometheus-client's exposition are in the binary too
        assert 'id="repo-alpha"' in httpx.get(f"{url}/", timeout=5).text
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'cccatalog_http_requests_total{route="git-upload-pack",status="200"}' in metrics

        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("serve did not exit within 30 s of SIGTERM")
    assert code == 0, (tmp_path / "serve.err").read_text()


def test_serve_get_answers_in_process(binary: Binary, synced: Synced) -> None:
    out = _run(binary, "serve", "-c", str(synced.config), "--get", "/healthz", env=synced.env)
    assert out.returncode == 0, out.stderr
    status, _, body = out.stdout.partition("\n")
    assert status == "200"
    assert json.loads(body) == {"status": "ok"}


# The binary on a PostgreSQL state (psycopg and its libpq inside it): tests/test_binary_tour.py.
