"""The whole tour, with nothing but the single binary: no virtualenv, no source tree, no PYTHONPATH.

PATH holds the binary's directory and the system directories of git and ssh-keygen; the working
directory is outside the checkout. Every step asserts its exit code and one thing a user would see:
`demo --once`; `sync` of local upstreams; `serve` answering a real `git clone` and
`git fetch --depth=2 --tags`; `status`; `check`; `bake` of a site, then `manifest` (site) ->
`export --since --sign-key` (connected) -> `import --allowed-signers` (site); and the same sync, status
and API on a PostgreSQL state. CI runs it against the binary it built (tests/binaryfixtures.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.binaryfixtures import Binary
from tests.gitfixtures import GIT_ENV, Upstream, git
from tests.transferfixtures import SIGNER, Sides, make_keys

pytestmark = [pytest.mark.timeout(600), pytest.mark.binary]

ROOT = Path(__file__).resolve().parent.parent


def _system_path(binary: Binary) -> str:
    """The binary's directory, then where git and ssh-keygen live (never a virtualenv's bin)."""
    dirs = [str(binary.bindir)]
    for tool in ("git", "ssh-keygen", "sh"):
        found = shutil.which(tool, path=os.defpath + ":/usr/local/bin")
        assert found, f"{tool} is not installed"
        if (parent := str(Path(found).parent)) not in dirs:
            dirs.append(parent)
    return ":".join(dirs)


class Tour:
    """Runs `cccatalog ARGS` from PATH in a clean environment, in a directory outside the checkout."""

    def __init__(self, binary: Binary, root: Path) -> None:
        self.root = root
        (root / "home").mkdir()
        self.env = {
            "PATH": _system_path(binary),
            "HOME": str(root / "home"),
            "LC_ALL": "C.UTF-8",
            "TMPDIR": str(root),
            **GIT_ENV,
            "CC_CATALOG_DISABLE_SCHEDULER": "1",
        }
        assert not str(root).startswith(str(ROOT))

    def run(self, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(
            ["cccatalog", *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert out.returncode == expect, f"cccatalog {' '.join(args)}: exit {out.returncode}\n{out.stderr}"
        assert "Traceback" not in out.stderr
        return out.stdout + out.stderr if expect else out.stdout

    @contextmanager
    def serving(self, config: Path, *, env: dict[str, str] | None = None) -> Iterator[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = ["cccatalog", "serve", "-c", str(config), "--host", "127.0.0.1", "--port", str(port)]
        log = (self.root / "serve.log").open("wb")
        proc = subprocess.Popen(argv, cwd=self.root, env={**self.env, **(env or {})}, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60  # the one-file binary unpacks itself first
            while True:
                assert proc.poll() is None, (self.root / "serve.log").read_text()
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, (self.root / "serve.log").read_text()
                time.sleep(0.1)
            yield url
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, (self.root / "serve.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture
def tour(binary: Binary) -> Iterator[Tour]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="cccatalog-tour-"))
    try:
        yield Tour(binary, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_tour_with_only_the_binary(tour: Tour) -> None:
    root = tour.root
    # 1. the demo: syncs, serves, clones once through the server, exits 0
    demo = tour.run("demo", "--once", "--dir", str(root / "demo"), "--port", "0")
    assert (root / "demo").is_dir(), demo

    # 2. sync of local upstreams into a connected host's mirrors
    upstream = Upstream(root / "upstreams" / "alpha")
    for n in range(3):  # history deeper than --depth=2
        upstream.commit(f"change {n}")
    sides = Sides(root / "sides", {"alpha": upstream.url})
    sides.write({})
    summary = json.loads(tour.run("sync", "-c", str(sides.connected), "--json"))
    assert [(r["slug"], r["action"]) for r in summary["repos"]] == [("alpha", "cloned")]

    # 3. serve: a real git clone and a shallow fetch with tags through it
    with tour.serving(sides.connected) as url:
        clone = root / "clone"
        git("clone", "-q", f"{url}/git/alpha.git", str(clone))
        assert git("rev-parse", "HEAD", cwd=clone) == upstream.sha("main")
        shallow = root / "shallow"
        git("init", "-q", str(shallow))
        git("fetch", "-q", "--depth=2", "--tags", f"{url}/git/alpha", "main", cwd=shallow)
        assert git("rev-parse", "FETCH_HEAD", cwd=shallow) == upstream.sha("main")
        assert (shallow / ".git" / "shallow").is_file()
        assert "v1.0.0" in git("tag", "--list", cwd=shallow).split()

    # 4. status and check of the connected host
    status = json.loads(tour.run("status", "-c", str(sides.connected), "--json"))
    assert status["ok"] is True
    assert [(r["slug"], r["head_commit"]) for r in status["repos"]] == [("alpha", upstream.sha("main"))]
    assert "error:" not in tour.run("check", "-c", str(sides.connected))

    # 5. across an air gap: bake the site, move upstream on, manifest -> export --since -> import
    keys = make_keys(root / "keys")
    tour.run("bake", "-c", str(sides.connected), "--dest", str(sides.site_mirrors))
    new = upstream.commit("after the bake")
    tour.run("sync", "-c", str(sides.connected))
    site_json = root / "site.json"
    tour.run("manifest", "-c", str(sides.site), "--out", str(site_json))
    assert json.loads(site_json.read_text())
    update = root / "update.tar"
    tour.run(
        "export",
        "-c",
        str(sides.connected),
        "--since",
        str(site_json),
        "--out",
        str(update),
        "--sign-key",
        str(keys.key),
    )
    assert update.stat().st_size > 0
    imported = json.loads(
        tour.run(
            "import",
            str(update),
            "-c",
            str(sides.site),
            "--allowed-signers",
            str(keys.allowed_signers),
            "--signer",
            SIGNER,
            "--json",
        )
    )
    assert [r["slug"] for r in imported["repos"]] == ["alpha"]
    assert sides.site_refs("alpha")["refs/heads/main"] == new
    # the air-gapped site is ready as it is: check passes (its warnings are not failures)
    tour.run("check", "-c", str(sides.site))


def test_the_tour_on_a_postgresql_state(tour: Tour, pg_url: str) -> None:
    """psycopg and its libpq travel inside the binary: sync, status, check and the API on PostgreSQL."""
    upstream = Upstream(tour.root / "upstreams" / "alpha")
    sides = Sides(tour.root / "sides", {"alpha": upstream.url})
    sides.write({})
    env = {"CCCATALOG_STATE_URL": pg_url}
    summary = json.loads(tour.run("sync", "-c", str(sides.connected), "--json", env=env))
    assert summary["ok"] is True
    status = json.loads(tour.run("status", "-c", str(sides.connected), "--json", env=env))
    assert [(r["slug"], r["head_commit"]) for r in status["repos"]] == [("alpha", upstream.sha("main"))]
    checks = json.loads(tour.run("check", "-c", str(sides.connected), "--json", env=env))["checks"]
    (state,) = [c for c in checks if c["subject"] == "CCCATALOG_STATE_URL"]
    assert (state["status"], "schema version" in state["detail"]) == ("ok", True), state
    assert "pg-Test-Secret" not in json.dumps(checks)
    with tour.serving(sides.connected, env=env) as url:
        repo = httpx.get(f"{url}/api/v1/git/repos/alpha", timeout=10).json()
        assert repo["head_commit"] == upstream.sha("main")
    assert not list(sides.root.rglob("*.sqlite3"))  # nothing went to a SQLite file
