"""`sync` against real upstreams (file:// and loopback HTTP), real git, a real state file."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cccatalog.catalog.store import Store
from cccatalog.cli import run as cli_run
from cccatalog.config import Config, load_config
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.locks import file_lock
from cccatalog.gitmirror.mirror import is_complete
from cccatalog.gitmirror.sync import Action, MirrorSyncer, RepoResult, SyncOptions, plan_sync
from cccatalog.jobs import recorder
from cccatalog.redact import Redactor
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream, git, http_upstream, mirror_refs
from tests.waiting import wait_until

MakeUpstream = Callable[[str], Upstream]


def run_sync(
    config: Config, *, environ: dict[str, str] | None = None, git_binary: str = "git", **opts: object
) -> list[RepoResult]:
    options = SyncOptions.from_config(config)
    if opts:
        from dataclasses import replace

        options = replace(options, **opts)  # type: ignore[arg-type]
    with Store.open(config.state.path) as store:
        syncer = MirrorSyncer(
            git=Git(redactor=Redactor(), binary=git_binary),
            layout=Layout(config.git.data_dir),
            options=options,
            environ=environ if environ is not None else dict(os.environ),
            record=recorder(store),
        )
        return syncer.run(plan_sync(config))


def one(results: list[RepoResult]) -> RepoResult:
    assert len(results) == 1, results
    return results[0]


def test_first_sync_publishes_a_verified_mirror_of_branches_and_tags(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    git("update-ref", "refs/pull/1/head", "HEAD", cwd=up.path)  # GitHub's PR refs must not be mirrored
    config = load_config(write_config({"alpha": up.url}))

    result = one(run_sync(config))

    assert result.action is Action.CLONED, result.error
    repo = config.git.data_dir / "alpha.git"
    assert result.head_commit == up.sha("main")
    assert result.default_branch == "main"
    assert mirror_refs(repo) == up.refs("refs/heads", "refs/tags")
    assert git("--git-dir", str(repo), "config", "gc.auto") == "0"
    assert list((repo / "objects" / "pack").glob("*.bitmap")), "no reachability bitmap"
    assert (repo / "objects" / "info" / "commit-graph").exists()
    assert (repo / "info" / "refs").exists()
    assert not list((config.git.data_dir / ".cccatalog" / "tmp").iterdir())


def test_second_sync_without_upstream_changes_is_unchanged(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    first = one(run_sync(config))
    second = one(run_sync(config))
    assert second.action is Action.UNCHANGED
    assert second.refs_fingerprint == first.refs_fingerprint


def test_sync_follows_new_commits_deleted_branches_and_default_branch_changes(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    run_sync(config)

    new_head = up.commit("second")
    up.commit("on trunk", branch="trunk")
    git("branch", "-D", "develop", cwd=up.path)
    git("symbolic-ref", "HEAD", "refs/heads/trunk", cwd=up.path)

    result = one(run_sync(config))

    repo = config.git.data_dir / "alpha.git"
    assert result.action is Action.UPDATED
    assert mirror_refs(repo) == up.refs("refs/heads", "refs/tags")
    assert "refs/heads/develop" not in mirror_refs(repo)
    assert mirror_refs(repo)["refs/heads/main"] == new_head
    assert result.default_branch == "trunk"
    assert git("--git-dir", str(repo), "symbolic-ref", "HEAD") == "refs/heads/trunk"


def test_changed_upstream_url_is_followed(make_upstream: MakeUpstream, write_config: MakeConfig) -> None:
    old, new = make_upstream("old"), make_upstream("new")
    run_sync(load_config(write_config({"alpha": old.url})))
    config = load_config(write_config({"alpha": new.url}))

    result = one(run_sync(config))

    repo = config.git.data_dir / "alpha.git"
    assert result.action is Action.UPDATED
    assert git("--git-dir", str(repo), "config", "remote.origin.url") == new.url
    assert mirror_refs(repo)["refs/heads/main"] == new.sha("main")


def test_failed_fetch_keeps_the_last_good_mirror_and_records_why(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    run_sync(load_config(write_config({"alpha": up.url})))
    repo = tmp_path / "mirrors" / "alpha.git"
    before = mirror_refs(repo)
    config = load_config(write_config({"alpha": (tmp_path / "gone").as_uri()}))

    result = one(run_sync(config))

    assert result.action is Action.FAILED
    assert "does not appear to be a git repository" in (result.error or "")
    assert mirror_refs(repo) == before
    assert is_complete(Git(redactor=Redactor()), repo)
    with Store.open(config.state.path) as store:
        status = store.get_mirror("alpha")
    assert status is not None
    assert status.last_error
    assert "gone" in status.last_error
    assert status.head_commit == up.sha("main")
    assert status.last_success_at is not None
    assert status.last_attempt_at is not None
    assert status.last_attempt_at > status.last_success_at


def test_upstream_that_suddenly_advertises_nothing_does_not_wipe_the_mirror(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    run_sync(config)
    before = mirror_refs(tmp_path / "mirrors" / "alpha.git")
    shutil.rmtree(up.path)
    git("init", "-q", "-b", "main", str(up.path))  # same URL, now an empty repository

    result = one(run_sync(config))

    assert result.action is Action.FAILED
    assert "no branches or tags" in (result.error or "")
    assert mirror_refs(tmp_path / "mirrors" / "alpha.git") == before


def test_failed_first_clone_leaves_nothing_published(write_config: MakeConfig, tmp_path: Path) -> None:
    config = load_config(write_config({"ghost": (tmp_path / "nowhere").as_uri()}))
    result = one(run_sync(config))
    assert result.action is Action.FAILED
    assert not (config.git.data_dir / "ghost.git").exists()
    assert not list((config.git.data_dir / ".cccatalog" / "tmp").iterdir())


def test_empty_upstream_is_refused_with_a_reason(write_config: MakeConfig, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    git("init", "-q", str(empty))
    config = load_config(write_config({"empty": empty.as_uri()}))
    result = one(run_sync(config))
    assert result.action is Action.FAILED
    assert "no branches or tags" in (result.error or "")
    assert not (config.git.data_dir / "empty.git").exists()


@pytest.mark.slow
def test_a_clone_in_progress_is_never_visible_under_the_published_name(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    with http_upstream(tmp_path / "served") as server:
        config = load_config(write_config({"alpha": server.repo_url("alpha")}))
        server.stall_seconds = 0.5
        checker = Git(redactor=Redactor())
        absent_polls = 0
        half_made: list[str] = []
        results: list[RepoResult] = []
        worker = threading.Thread(target=lambda: results.extend(run_sync(config)))
        worker.start()
        published = config.git.data_dir / "alpha.git"
        while worker.is_alive():
            if not published.exists():
                absent_polls += 1
            elif not is_complete(checker, published):
                half_made.append("published before it was complete")
            time.sleep(0.05)
        worker.join()
    assert one(results).action is Action.CLONED
    assert absent_polls > 5, "the stalled clone was not observed in progress"
    assert half_made == []
    assert is_complete(checker, published)


@pytest.mark.slow
def test_clone_timeout_fails_cleanly_and_kills_git(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    with http_upstream(tmp_path / "served") as server:
        server.stall_seconds = 5
        config = load_config(write_config({"alpha": server.repo_url("alpha")}))
        result = one(run_sync(config, clone_timeout=1.0))
    assert result.action is Action.FAILED
    assert "timed out after 1s" in (result.error or "")
    assert not (config.git.data_dir / "alpha.git").exists()

    # Only this test's processes name its upstream's port; a killed helper may take a moment to go.
    def helper_gone() -> bool:
        found = subprocess.run(
            ["pgrep", "-f", f"remote-http.*{server.url}"], capture_output=True, check=False
        )
        return found.stdout == b""

    assert wait_until(helper_gone, 10)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda repo: [p.unlink() for p in (repo / "objects" / "pack").iterdir()], id="packs-deleted"
        ),
        pytest.param(lambda repo: (repo / "HEAD").write_text("garbage\n"), id="head-garbage"),
        pytest.param(lambda repo: shutil.rmtree(repo / "objects"), id="objects-missing"),
    ],
)
def test_broken_published_mirror_is_rebuilt_beside_and_swapped_in(
    make_upstream: MakeUpstream, write_config: MakeConfig, damage: Callable[[Path], object]
) -> None:
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    run_sync(config)
    repo = config.git.data_dir / "alpha.git"
    inode_before = repo.stat().st_ino
    damage(repo)

    result = one(run_sync(config))

    assert result.action is Action.REBUILT, result.error
    assert is_complete(Git(redactor=Redactor()), repo)
    assert mirror_refs(repo) == up.refs("refs/heads", "refs/tags")
    assert repo.stat().st_ino != inode_before, "the broken repo was repaired in place, not swapped"
    assert not list((config.git.data_dir / ".cccatalog" / "tmp").iterdir())


def test_refs_all_mirrors_everything_and_narrowing_drops_pull_refs(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    git("update-ref", "refs/pull/7/head", "HEAD", cwd=up.path)
    full = load_config(write_config({"alpha": up.url}, git_extra="  refs: all\n"))
    run_sync(full)
    repo = full.git.data_dir / "alpha.git"
    assert "refs/pull/7/head" in mirror_refs(repo)

    narrow = load_config(write_config({"alpha": up.url}))
    result = one(run_sync(narrow))

    assert result.action is Action.UPDATED
    assert mirror_refs(repo) == up.refs("refs/heads", "refs/tags")


def test_a_predecessor_clone_mirror_is_adopted_and_slimmed(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    git("update-ref", "refs/pull/1/head", "HEAD", cwd=up.path)
    (tmp_path / "mirrors").mkdir()
    git("clone", "-q", "--mirror", up.url, str(tmp_path / "mirrors" / "alpha.git"))
    config = load_config(write_config({"alpha": up.url}))

    result = one(run_sync(config))

    repo = config.git.data_dir / "alpha.git"
    assert result.action is Action.UPDATED
    assert "refs/pull/1/head" not in mirror_refs(repo)
    assert list((repo / "objects" / "pack").glob("*.bitmap"))


def test_second_sync_of_a_locked_repo_is_skipped_with_no_wait(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    layout = Layout(config.git.data_dir)
    with file_lock(layout.lock("alpha"), timeout=0, what="test"):
        skipped = one(run_sync(config, no_wait=True))
        waited = one(run_sync(config, lock_timeout=0.3))
    assert skipped.action is Action.SKIPPED
    assert "locked by another cccatalog process" in (skipped.error or "")
    assert waited.action is Action.FAILED
    assert "after waiting" in (waited.error or "") or "locked" in (waited.error or "")
    assert one(run_sync(config)).action is Action.CLONED


def lock_is_held(lock: Path) -> bool:
    """True while another process holds an exclusive flock on `lock`."""
    import fcntl

    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our lock, if we got it
    return False


def test_lock_is_held_across_processes(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    lock = Layout(config.git.data_dir).lock("alpha")
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(["flock", "--exclusive", str(lock), "sleep", "30"])
    try:
        wait_until(lambda: lock_is_held(lock), 10, what="the other process to take the lock", interval=0.02)
        result = one(run_sync(config, no_wait=True))
    finally:
        holder.kill()
        holder.wait()
    assert result.action is Action.SKIPPED


def test_parallel_sync_of_many_repos(make_upstream: MakeUpstream, write_config: MakeConfig) -> None:
    ups = {f"repo{i}": make_upstream(f"repo{i}").url for i in range(6)}
    config = load_config(write_config(ups))
    results = run_sync(config, jobs=3)
    assert [r.slug for r in results] == sorted(ups)
    assert {r.action for r in results} == {Action.CLONED}


TOKEN = "ghp_" + "S3cr3tT0kenValue" * 2


def _wrapper_logging_argv(tmp_path: Path) -> tuple[str, Path]:
    """A `git` that records its argv and then runs the real git: proves secrets never reach argv."""
    log = tmp_path / "argv.log"
    script = tmp_path / "git-wrapper"
    real = shutil.which("git")
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def test_token_auth_reaches_the_upstream_as_github_basic_and_nowhere_else(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    import base64

    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    header = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    wrapper, argv_log = _wrapper_logging_argv(tmp_path)
    with http_upstream(tmp_path / "served", required_authorization=header) as server:
        config = load_config(
            write_config(
                {"alpha": server.repo_url("alpha")}, git_extra="  auth:\n    token_env: TEST_TOKEN\n"
            )
        )
        env = {**os.environ, "TEST_TOKEN": TOKEN}
        result = one(run_sync(config, environ=env, git_binary=wrapper))
        again = one(run_sync(config, environ=env, git_binary=wrapper))

    assert result.action is Action.CLONED, result.error
    assert again.action is Action.UNCHANGED, again.error
    assert header in server.seen_authorization
    leaked_forms = (TOKEN, header.split()[1])
    repo = config.git.data_dir / "alpha.git"
    for place in (
        argv_log.read_text(),
        (repo / "config").read_text(),
        config.state.path.read_bytes().decode("latin-1"),
    ):
        for secret in leaked_forms:
            assert secret not in place


def test_wrong_token_fails_with_a_redacted_error(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    with http_upstream(tmp_path / "served", required_authorization="Basic nope") as server:
        config = load_config(
            write_config(
                {"alpha": server.repo_url("alpha")}, git_extra="  auth:\n    token_env: TEST_TOKEN\n"
            )
        )
        result = one(run_sync(config, environ={**os.environ, "TEST_TOKEN": TOKEN}))
    assert result.action is Action.FAILED
    assert "the upstream refused the credentials named in git.auth" in (result.error or "")
    assert TOKEN not in (result.error or "")
    with Store.open(config.state.path) as store:
        status = store.get_mirror("alpha")
    assert status is not None
    assert status.last_error
    assert TOKEN not in status.last_error


def test_an_unset_token_variable_syncs_anonymously_and_says_so(
    make_upstream: MakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A public upstream still syncs when the token's variable is missing, but never silently: the
    variable is named on stderr and in the JSON summary."""
    make_upstream("alpha")
    config = tmp_path / "config.yaml"
    with http_upstream(tmp_path / "upstreams") as server:
        config.write_text(
            "git:\n  enabled: true\n  data_dir: mirrors\n  auth:\n    token_env: UNSET_TOKEN_VAR\n"
            f"sources:\n  - name: s\n    type: static\n    codecollections:\n"
            f"      - slug: alpha\n        git_url: {server.repo_url('alpha')}\n"
        )
        code = cli_run(["sync", "-c", str(config), "--json"])
        assert server.seen_authorization
        assert not any(server.seen_authorization)
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["repos"][0]["action"] == "cloned"
    warning = (
        "git.auth.token_env: environment variable UNSET_TOKEN_VAR is not set or empty; fetching anonymously"
    )
    assert summary["warnings"] == [warning]
    assert warning in err


@pytest.mark.parametrize("form", ["user_pass", "dockerconfig_path", "dockerconfig_inline"])
def test_basic_and_docker_config_auth(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path, form: str
) -> None:
    import base64
    import json

    up = make_upstream("alpha")
    git("clone", "-q", "--bare", str(up.path), str(tmp_path / "served" / "alpha"))
    header = "Basic " + base64.b64encode(b"robot:pa55-word-xyz").decode()
    with http_upstream(tmp_path / "served", required_authorization=header) as server:
        host = server.url.removeprefix("http://")
        docker_config = json.dumps(
            {"auths": {host: {"auth": header.split()[1]}, "other.io": {"auth": "eDp5"}}}
        )
        (tmp_path / "docker.json").write_text(docker_config)
        auth, env = {
            "user_pass": ("    user_env: U\n    pass_env: P\n", {"U": "robot", "P": "pa55-word-xyz"}),
            "dockerconfig_path": ("    dockerconfigjson_env: DCJ\n", {"DCJ": str(tmp_path / "docker.json")}),
            "dockerconfig_inline": ("    dockerconfigjson_env: DCJ\n", {"DCJ": docker_config}),
        }[form]
        config = load_config(write_config({"alpha": server.repo_url("alpha")}, git_extra=f"  auth:\n{auth}"))
        result = one(run_sync(config, environ={**os.environ, **env}))
    assert result.action is Action.CLONED, result.error


def test_a_sync_that_finds_maintenance_owed_clears_what_a_killed_git_left_and_finishes(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    """A run whose git was SIGKILLed mid-fetch (the whole group, as an OOM kill or a container stop
    does) leaves git's lock files and a half-written pack, and the maintenance-owed marker."""
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    one(run_sync(config))
    new_head = up.commit("second")
    repo = config.git.data_dir / "alpha.git"
    layout = Layout(config.git.data_dir)
    layout.maintenance_owed("alpha").parent.mkdir(parents=True, exist_ok=True)
    layout.maintenance_owed("alpha").write_text("running\n")
    (repo / "refs" / "heads").mkdir(parents=True, exist_ok=True)
    left = [repo / "refs" / "heads" / "main.lock", repo / "packed-refs.lock", repo / "config.lock"]
    left.append(repo / "objects" / "pack" / "tmp_pack_Xy12Zw")
    for path in left:
        path.write_bytes(b"half-written\n")

    result = one(run_sync(config))

    assert result.action is Action.UPDATED, result.error
    assert mirror_refs(repo)["refs/heads/main"] == new_head
    assert [p for p in left if p.exists()] == []
    assert len(list((repo / "objects" / "pack").glob("*.pack"))) == 1
    assert not layout.maintenance_owed("alpha").exists()


def test_lock_files_are_left_alone_when_no_run_was_interrupted(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    """Unless a run of ours was killed, a lock file may belong to someone else's git: the sync fails
    and says which, run after run, and never deletes it."""
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    one(run_sync(config))
    up.commit("second")
    repo = config.git.data_dir / "alpha.git"
    (repo / "refs" / "heads").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "heads" / "main.lock").write_text("someone else's\n")

    results = [one(run_sync(config)), one(run_sync(config))]

    for result in results:
        assert result.action is Action.FAILED
        assert "main.lock" in (result.error or "")
    assert (repo / "refs" / "heads" / "main.lock").exists()
