"""The cheap paths of a sync: which git processes each kind of run starts, the config read without git,
and timeouts enforced by the watchdog instead of a polling wait. Real git, real processes throughout."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cccatalog.catalog.store import Store
from cccatalog.config import Config, load_config
from cccatalog.errors import GitError
from cccatalog.gitmirror.git import Git, _subcommand
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.mirror import REFSPECS, Mirror, _read_plain_config
from cccatalog.gitmirror.sync import Action, MirrorSyncer, RepoResult, SyncOptions, plan_sync
from cccatalog.jobs import recorder
from cccatalog.redact import Redactor
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream, git, mirror_refs

MakeUpstream = Callable[[str], Upstream]


def logging_git(tmp_path: Path) -> tuple[str, Path]:
    """A `git` that appends its argv to a log, one line per process, then runs the real git."""
    log = tmp_path / "argv.log"
    script = tmp_path / "git-logging"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{shutil.which("git")}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def commands(log: Path) -> list[str]:
    """The git subcommands in the log, in order; the log is emptied for the next run."""
    lines = log.read_text().splitlines() if log.exists() else []
    log.write_text("")
    return [_subcommand(line.split()) for line in lines]


def sync(config: Config, binary: str) -> RepoResult:
    with Store.open(config.state.path) as store:
        syncer = MirrorSyncer(
            git=Git(redactor=Redactor(), binary=binary),
            layout=Layout(config.git.data_dir),
            options=SyncOptions.from_config(config),
            environ={},
            record=recorder(store),
        )
        [result] = syncer.run(plan_sync(config))
    return result


def test_each_kind_of_sync_starts_only_the_git_processes_it_needs(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    binary, log = logging_git(tmp_path)

    first = sync(config, binary)
    assert first.action is Action.CLONED, first.error
    # the config is written in one go and read back once; no `remote add`, no `config` per key
    assert commands(log) == [
        "init",
        "config",
        "ls-remote",
        "fetch",
        "symbolic-ref",
        "for-each-ref",
        "fsck",
        "pack-refs",
        "repack",
        "commit-graph",
    ]

    unchanged = sync(config, binary)
    assert unchanged.action is Action.UNCHANGED, unchanged.error
    # one process reads the refs and proves the mirror complete (beside ls-remote, so in either
    # order); the config is read from its file
    assert sorted(commands(log)) == ["for-each-ref", "ls-remote"]
    assert unchanged.refs_fingerprint == first.refs_fingerprint
    assert unchanged.head_commit == first.head_commit

    new_head = up.commit("second")
    updated = sync(config, binary)
    assert updated.action is Action.UPDATED, updated.error
    ran = commands(log)
    assert sorted(ran[:2]) == ["for-each-ref", "ls-remote"]
    assert ran[2:] == ["fetch", "pack-refs", "repack", "commit-graph", "for-each-ref"]
    assert updated.head_commit == new_head
    repo = config.git.data_dir / "alpha.git"
    assert mirror_refs(repo) == up.refs("refs/heads", "refs/tags")
    assert new_head in (repo / "info" / "refs").read_text(), "repack did not update the server info"


def test_a_mirror_with_a_detached_head_is_updated_in_place(
    make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    sync(config, "git")
    repo = config.git.data_dir / "alpha.git"
    git("--git-dir", str(repo), "update-ref", "--no-deref", "HEAD", up.sha("main"))
    inode = repo.stat().st_ino

    result = sync(config, "git")

    assert result.action is Action.UPDATED, result.error
    assert repo.stat().st_ino == inode, "a complete mirror was rebuilt"
    assert git("--git-dir", str(repo), "symbolic-ref", "HEAD") == "refs/heads/main"


def test_a_config_git_wrote_with_quotes_is_read_by_git_and_kept(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    config = load_config(write_config({"alpha": up.url}))
    sync(config, "git")
    repo = config.git.data_dir / "alpha.git"
    git("--git-dir", str(repo), "config", "cccatalog-test.note", "a value; with # and \\")
    binary, log = logging_git(tmp_path)

    result = sync(config, binary)

    assert result.action is Action.UNCHANGED, result.error
    assert sorted(commands(log)) == ["config", "for-each-ref", "ls-remote"]
    assert git("--git-dir", str(repo), "config", "remote.origin.url") == up.url


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/org/repo.git",
        "https://git.example.com/a repo#frag;x=1",
        'https://git.example.com/quote"back\\slash',
        " https://git.example.com/padded ",
    ],
)
def test_init_writes_a_config_git_reads_back_exactly(url: str, tmp_path: Path) -> None:
    binary, log = logging_git(tmp_path)
    repo = tmp_path / "new.git"
    Mirror(Git(redactor=Redactor(), binary=binary), repo).init(url, "branches-and-tags")

    assert commands(log) == ["init", "config"]  # read back once, nothing needed correcting
    listed = git_listing(repo / "config")
    assert listed["remote.origin.url"] == [url]
    assert listed["remote.origin.fetch"] == list(REFSPECS["branches-and-tags"])
    assert listed["core.bare"] == ["true"]
    assert listed["gc.auto"] == ["0"]


def git_listing(path: Path) -> dict[str, list[str]]:
    out = subprocess.run(
        ["git", "config", "--file", str(path), "--null", "--list"], capture_output=True, check=True, text=True
    ).stdout
    values: dict[str, list[str]] = {}
    for item in out.split("\0"):
        key, _, value = item.partition("\n")
        if key:
            values.setdefault(key.lower(), []).append(value)
    return values


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('[core]\n\tbare = true\n[remote "origin"]\n\turl = file:///x\n', id="as-git-writes"),
        pytest.param("[core]\nbare=true\n  [gc]  \n   auto   =   0   \n", id="spacing"),
        pytest.param('[remote "Origin"]\n\turl = a  b\n\tfetch = +x\n\tfetch = +y\n', id="repeats"),
        pytest.param("# comment\n; another\n\n[Core]\n\tBare = true\n", id="comments-and-case"),
        pytest.param('[http "https://h/"]\n\textraHeader = X-Empty:\n\tempty =\n', id="empty-value"),
    ],
)
def test_a_plain_config_is_read_as_git_lists_it(text: str, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    assert _read_plain_config(path) == git_listing(path)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('[remote "origin"]\n\turl = "quoted"\n', id="quoted"),
        pytest.param("[core]\n\tbare = true # trailing comment\n", id="trailing-comment"),
        pytest.param("[core]\n\tbare = tr\\\n ue\n", id="continuation"),
        pytest.param("[core]\n\tbare\n", id="no-value"),
        pytest.param("[include]\n\tpath = other\n", id="include"),
        pytest.param('[includeIf "gitdir:/x/"]\n\tpath = other\n', id="include-if"),
        pytest.param("[remote.origin]\n\turl = x\n", id="old-subsection-syntax"),
        pytest.param("[core] bare = true\n", id="key-on-section-line"),
        pytest.param("[core]\r\n\tbare = true\r\n", id="crlf"),
        pytest.param("[core]\n\tbare = a\tb\n", id="tab-in-value"),
        pytest.param("\tbare = true\n", id="no-section"),
    ],
)
def test_anything_but_a_plain_config_is_left_to_git(text: str, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    assert _read_plain_config(path) is None


def sleeping_git(tmp_path: Path) -> str:
    """A `git` whose `sleep N` starts a child that sleeps, as a stuck remote helper would."""
    script = tmp_path / "git-sleeping"
    script.write_text('#!/bin/sh\n[ "$1" = sleep ] && { sleep "$2"; exit 0; }\nexec git "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_timeout_kills_the_whole_process_group_without_waiting_for_the_longest(tmp_path: Path) -> None:
    git_ = Git(redactor=Redactor(), binary=sleeping_git(tmp_path))
    patient = git_.start(["sleep", "8"], timeout=60)  # registered first, ends on its own
    stuck = git_.start(["sleep", "37"], timeout=1)  # the earlier deadline must still be kept

    with pytest.raises(GitError, match=r"git sleep timed out after 1s"):
        stuck.result()
    assert patient._proc.poll() is None, "the stuck run waited for the patient one's deadline"
    stuck_group = stuck._proc.pid  # its own session: the group id is its pid
    deadline = time.monotonic() + 10
    while _group_alive(stuck_group) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(stuck_group), "the child of the timed-out git survived"
    assert patient.result().returncode == 0


@pytest.mark.slow
def test_a_run_that_ends_in_time_is_not_reported_as_timed_out(tmp_path: Path) -> None:
    git_ = Git(redactor=Redactor(), binary=sleeping_git(tmp_path))
    assert git_.run(["sleep", "0"], timeout=1).returncode == 0
    assert git_.run(["--version"], timeout=5).stdout.startswith("git version")
    time.sleep(1.2)  # past the first run's deadline: nothing is killed or reported late
    assert git_.run(["--version"]).stdout.startswith("git version")
