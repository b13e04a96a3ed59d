"""Two syncs at once, as cron, an operator and serve's scheduler make them: `--no-wait` reports what it
skipped and exits 0, `--only` waits for (or skips) just the repos that are busy, and a sync that waits
says on stderr for whom. Real `cccatalog sync` processes against a loopback upstream that holds one
run mid-fetch until the test lets it go."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cccatalog.config import load_config
from cccatalog.gitmirror.locks import file_lock
from cccatalog.jobs import run_lock_path
from tests.gitfixtures import Behaviour, HTTPUpstreamServer, Upstream, git, http_upstream
from tests.waiting import wait_until

MakeUpstream = Callable[[str], Upstream]


class Run:
    """A `cccatalog sync --json` process; its stderr is read as it comes (to see it wait)."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.stderr)

    def finish(self) -> tuple[int, dict[str, Any]]:
        """Exit code and the JSON summary."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(60)
        self._reader.join(10)
        return self.proc.returncode, json.loads(out)


def actions(report: dict[str, Any]) -> dict[str, str]:
    return {r["slug"]: r["action"] for r in report["repos"]}


@dataclass
class Site:
    tmp: Path
    server: HTTPUpstreamServer
    config_path: Path

    def sync(self, *args: str) -> Run:
        return Run(
            [sys.executable, "-m", "cccatalog", "sync", "-c", str(self.config_path), "--json", *args],
            self.tmp,
        )

    def held_on_alpha(self) -> Run:
        """A full sync (one repo at a time, alpha first) that stops inside alpha's fetch."""
        self.server.behaviours["alpha"] = Behaviour(hold="fetch")
        holder = self.sync("-j", "1", "--no-images")
        assert wait_until(lambda: self.server.held.is_set() or holder.proc.poll() is not None, 60)
        assert self.server.held.is_set(), holder.stderr
        return holder


@pytest.fixture
def site(make_upstream: MakeUpstream, tmp_path: Path) -> Iterator[Site]:
    for name in ("alpha", "beta"):
        git("clone", "-q", "--bare", str(make_upstream(name).path), str(tmp_path / "served" / name))
    builds = {"default_ref": "main", "refs": [{"ref": "main", "image_tag": "main-1234567-89abcde"}]}
    (tmp_path / "alpha-builds.json").write_text(json.dumps(builds))
    with http_upstream(tmp_path / "served") as server:
        config_path = tmp_path / "config.yaml"
        config_path.write_text(
            "git:\n  enabled: true\n  data_dir: mirrors\n  lock_timeout_seconds: 60\n"
            "state:\n  path: state/state.db\n"
            "sources:\n  - name: test\n    type: static\n    codecollections:\n"
            f"      - slug: alpha\n        git_url: {server.repo_url('alpha')}\n"
            f"        static_path: {tmp_path / 'alpha-builds.json'}\n"
            f"      - slug: beta\n        git_url: {server.repo_url('beta')}\n"
        )
        yield Site(tmp_path, server, config_path)


def test_no_wait_while_a_full_sync_runs_reports_every_repo_skipped_and_exits_0(site: Site) -> None:
    holder = site.held_on_alpha()

    code, report = site.sync("--no-wait", "--no-images").finish()

    site.server.release.set()
    assert holder.finish()[0] == 0
    assert code == 0, report
    assert report["ok"] is True
    assert actions(report) == {"alpha": "skipped", "beta": "skipped"}
    for repo in report["repos"]:
        assert f"the git sync is locked by another cccatalog process (pid {holder.proc.pid})" in repo["error"]
        assert "skipped (--no-wait)" in repo["error"]


def test_only_a_repo_nobody_is_syncing_is_synced_at_once_while_a_full_sync_runs(site: Site) -> None:
    holder = site.held_on_alpha()

    idle = site.sync("--only", "beta", "--no-wait", "--no-images").finish()
    busy = site.sync("--only", "alpha", "--no-wait", "--no-images").finish()

    site.server.release.set()
    code, report = holder.finish()
    assert (code, actions(report)) == (0, {"alpha": "cloned", "beta": "unchanged"})
    assert (idle[0], actions(idle[1])) == (0, {"beta": "cloned"})
    assert (busy[0], actions(busy[1])) == (0, {"alpha": "skipped"})
    error = busy[1]["repos"][0]["error"]
    assert f"mirror alpha is locked by another cccatalog process (pid {holder.proc.pid})" in error


def test_a_waiting_sync_says_once_for_whom_it_waits_and_then_does_the_work(site: Site) -> None:
    holder = site.held_on_alpha()
    full = site.sync("--no-images")
    only = site.sync("--only", "alpha", "--no-images")

    pid = holder.proc.pid
    assert wait_until(lambda: full.said(f"waiting for another git sync (pid {pid}) to finish, up to 60s"), 30)
    assert wait_until(lambda: only.said(f"alpha: waiting for another sync of this mirror (pid {pid})"), 30)
    assert full.proc.poll() is None
    assert only.proc.poll() is None
    site.server.release.set()

    assert holder.finish()[0] == 0
    for run, expected in (
        (only, {"alpha": "unchanged"}),
        (full, {"alpha": "unchanged", "beta": "unchanged"}),
    ):
        code, report = run.finish()
        assert (code, actions(report)) == (0, expected), run.stderr
        assert len([line for line in run.stderr if "waiting" in line]) == 1, run.stderr


def test_no_wait_skips_the_image_poll_another_run_holds_and_still_syncs_git(site: Site) -> None:
    config = load_config(site.config_path)
    with file_lock(run_lock_path(config, "images"), timeout=0, what="test"):
        code, report = site.sync("--no-wait", "--only", "alpha").finish()
    assert code == 0, report
    assert actions(report) == {"alpha": "cloned"}
    [image] = report["images"]
    assert image["slug"] == "alpha"
    assert image["error"] is None
    assert f"the images sync is locked by another cccatalog process (pid {os.getpid()})" in image["note"]
    assert "skipped (--no-wait)" in image["note"]
