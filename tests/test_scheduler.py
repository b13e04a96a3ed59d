"""The scheduler inside `serve`: on by default with the predecessor's intervals, first runs at
start-up, again on its interval (a minute is injectable, so these tests use fractions of a second),
skipped while another process holds the run lock, and never past the git air-gap guard."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cccatalog.config import Config, load_config
from cccatalog.jobs import run_lock_path
from cccatalog.redact import Redactor
from cccatalog.server.api import handle
from cccatalog.server.service import Service, build_service, scheduler_intervals
from tests.apifixtures import Collection, build, image_tag, write_builds, write_catalog_config
from tests.gitfixtures import Upstream, git, http_upstream
from tests.servefixtures import serve_process
from tests.waiting import wait_until

MakeUpstream = Callable[[str], Upstream]
CATALOG = "/api/v1/catalog/codecollections"
HOLD_LOCK = """
import sys
from pathlib import Path
from cccatalog.gitmirror.locks import file_lock
with file_lock(Path(sys.argv[1]), timeout=10, what="a cron sync"):
    print("held", flush=True)
    sys.stdin.read()
"""


class Lines(logging.Handler):
    """The lines serve logs, as an operator reads them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))


@pytest.fixture
def serve_log() -> Iterator[Lines]:
    logger = logging.getLogger("cccatalog.serve")
    lines, level = Lines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


@contextmanager
def service_for(config: Config, environ: dict[str, str] | None = None) -> Iterator[Service]:
    service = build_service(config, environ=environ or {}, redactor=Redactor())
    try:
        yield service
    finally:
        service.close()


def get(service: Service, path: str) -> Any:
    answer = handle(service.api, "GET", path, "only_with_image=false", None)
    assert answer is not None
    return answer.body


def latest_tag(service: Service, slug: str) -> str | None:
    entry = get(service, f"{CATALOG}/{slug}")
    return entry.get("latest_image_tag") if isinstance(entry, dict) else None


def site(tmp_path: Path, up: Upstream | None, **git: object) -> Config:
    """alpha: a git upstream (when given) and a static list of builds; nothing synced yet."""
    collection = Collection("alpha", up.url if up else None, [build("main", "aaaaaa1")])
    return load_config(write_catalog_config(tmp_path / "config.yaml", [collection], git=git))


# --- the decision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheduler", "environ", "flags", "expected"),
    [
        ({}, {}, {}, (60, 5, None)),
        ({"git_sync_minutes": 15, "catalog_poll_minutes": 1}, {}, {}, (15, 1, None)),
        ({"git_sync_minutes": 0}, {}, {}, (0, 5, None)),
        ({"git_sync_minutes": 0, "catalog_poll_minutes": 0}, {}, {}, (0, 0, "are 0")),
        ({}, {"CC_CATALOG_DISABLE_SCHEDULER": "1"}, {}, (0, 0, "CC_CATALOG_DISABLE_SCHEDULER is set")),
        ({}, {"CC_CATALOG_DISABLE_SCHEDULER": "True"}, {}, (0, 0, "CC_CATALOG_DISABLE_SCHEDULER is set")),
        ({}, {"CCCATALOG_DISABLE_SCHEDULER": "yes"}, {}, (0, 0, "CCCATALOG_DISABLE_SCHEDULER is set")),
        ({}, {"CC_CATALOG_DISABLE_SCHEDULER": "0"}, {}, (60, 5, None)),
        ({}, {"CC_CATALOG_DISABLE_SCHEDULER": ""}, {}, (60, 5, None)),
        ({}, {"CC_CATALOG_DISABLE_SCHEDULER": "1"}, {"git_minutes": 30}, (30, 0, None)),
        ({"git_sync_minutes": 0}, {}, {"git_minutes": 2, "catalog_minutes": 3}, (2, 3, None)),
    ],
)
def test_the_scheduler_is_on_by_default_and_turned_off_by_the_predecessors_variable(
    tmp_path: Path,
    scheduler: dict[str, int],
    environ: dict[str, str],
    flags: dict[str, int],
    expected: tuple[int, int, str | None],
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"scheduler": scheduler}))
    git_minutes, catalog_minutes, why = scheduler_intervals(load_config(path, environ={}), environ, **flags)
    assert (git_minutes, catalog_minutes) == expected[:2]
    assert (why is None) == (expected[2] is None)
    assert expected[2] is None or expected[2] in str(why)


# --- runs -----------------------------------------------------------------------------------------


def test_both_syncs_first_run_at_start_up(
    tmp_path: Path, make_upstream: MakeUpstream, serve_log: Lines
) -> None:
    up = make_upstream("alpha")
    config = site(tmp_path, up)
    with service_for(config) as service:
        assert latest_tag(service, "alpha") is None
        assert service.start_scheduler() is not None  # 60 and 5 minutes: only the runs at start-up
        wait_until(
            lambda: latest_tag(service, "alpha") == image_tag("main", "aaaaaa1"), what="the image poll"
        )
        wait_until(
            lambda: get(service, "/api/v1/git/repos/alpha")["head_commit"] == up.sha("main"), what="git"
        )
    assert serve_log.count("scheduled sync-git started") == 1
    assert serve_log.count("scheduled sync-catalog started") == 1


def test_runs_repeat_on_the_interval(tmp_path: Path, serve_log: Lines) -> None:
    config = site(tmp_path, None, enabled=False)
    with service_for(config) as service:
        service.start_scheduler(catalog_minutes=1, unit=0.05)
        wait_until(
            lambda: latest_tag(service, "alpha") == image_tag("main", "aaaaaa1"), what="the first poll"
        )
        write_builds(config.path, "alpha", [build("main", "aaaaaa1"), build("main", "bbbbbb2")])
        wait_until(lambda: latest_tag(service, "alpha") == image_tag("main", "bbbbbb2"), what="a later poll")
        wait_until(lambda: serve_log.count("scheduled sync-catalog started") >= 3, what="a third run")
    assert serve_log.count("sync-git") == 0  # git is disabled in this config


def test_a_run_is_skipped_while_another_process_holds_its_lock(tmp_path: Path, serve_log: Lines) -> None:
    config = site(tmp_path, None, enabled=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_lock_path(config, "images"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        with service_for(config) as service:
            service.start_scheduler(catalog_minutes=1, unit=0.05)
            wait_until(lambda: serve_log.count("scheduled sync-catalog skipped") >= 3, what="skipped runs")
            assert latest_tag(service, "alpha") is None
            assert serve_log.count("scheduled sync-catalog started") == 0
            assert "another cccatalog process" in next(line for line in serve_log.lines if "skipped" in line)
            holder.stdin.close()
            holder.wait(10)
            wait_until(
                lambda: latest_tag(service, "alpha") == image_tag("main", "aaaaaa1"), what="a run after"
            )
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_git_runs_never_reach_the_upstream_past_the_air_gap_guard(
    tmp_path: Path, make_upstream: MakeUpstream, serve_log: Lines
) -> None:
    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    with http_upstream(tmp_path / "served") as upstream:
        collection = Collection("alpha", upstream.repo_url("alpha"), [build("main", "aaaaaa1")])
        path = write_catalog_config(tmp_path / "config.yaml", [collection], git={"runtime_sync": False})
        config = load_config(path)
        with service_for(config) as service:
            service.start_scheduler(git_minutes=1, catalog_minutes=1, unit=0.05)
            wait_until(
                lambda: serve_log.count("sync-git skipped: git.runtime_sync is false") >= 3, what="git runs"
            )
            # the image half is not held back by the git guard: the static source was read
            wait_until(
                lambda: latest_tag(service, "alpha") == image_tag("main", "aaaaaa1"), what="the image poll"
            )
            assert get(service, "/api/v1/git/repos/alpha")["present"] is False
        assert upstream.seen_authorization == []  # not one request reached the upstream
    assert serve_log.count("scheduled sync-git started") == 0


# --- a real `serve` -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_serve_process_runs_the_scheduler_at_start_up_unless_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The predecessor's deployments relied on it: a catalog nobody syncs by hand fills itself."""
    monkeypatch.delenv("CCCATALOG_ADMIN_TOKEN", raising=False)
    config = site(tmp_path, None, enabled=False)
    env = {"CC_CATALOG_LOG_LEVEL": "INFO"}
    disabled = {**env, "CC_CATALOG_DISABLE_SCHEDULER": "1"}
    with serve_process(config.path, env=disabled, scheduler=True) as (proc, url):
        assert httpx.get(f"{url}{CATALOG}/alpha").json()["latest_image_tag"] is None
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    assert "scheduler off: CC_CATALOG_DISABLE_SCHEDULER is set" in stderr
    with serve_process(config.path, env=env, scheduler=True) as (proc, url):
        wait_until(
            lambda: (
                httpx.get(f"{url}{CATALOG}/alpha").json()["latest_image_tag"] == image_tag("main", "aaaaaa1")
            ),
            what="the poll at start-up",
        )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    assert "scheduler on: git sync every 60 min, image poll every 5 min" in stderr
    assert os.path.exists(config.state.path)
