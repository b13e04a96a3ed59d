"""`cccatalog status`: one line for cron and monitoring scripts. It reads the state file and nothing else
(no network, no git), never creates or changes a file, prints per repository and per CodeCollection
what an operator checks, and exits 1 when a repository is older than --max-age or failed its last sync.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cccatalog.catalog.store import Store
from cccatalog.cli import run
from cccatalog.config import load_config
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.servable import Servability
from cccatalog.redact import Redactor
from cccatalog.server.service import backfill
from tests.apifixtures import Collection, build, write_catalog_config
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream

MakeUpstream = Callable[[str], Upstream]


def status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(["status", *args])
    out, err = capsys.readouterr()
    return code, out, err


def tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory` with its size and modification time."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def age_mirror(state: Path, slug: str, *, hours: float) -> None:
    """Record `slug`'s last successful sync `hours` ago, as a sync that long ago would have."""
    with Store.open(state) as store:
        mirror = store.get_mirror(slug)
        assert mirror is not None
        assert mirror.head_commit
        when = datetime.now(UTC) - timedelta(hours=hours)
        store.record_mirror_success(
            slug,
            upstream_url="x",
            action="updated",
            head_commit=mirror.head_commit,
            default_branch=mirror.default_branch or "main",
            refs_fingerprint="x",
            attempted_at=when,
            finished_at=when,
        )


@pytest.fixture
def synced(make_upstream: MakeUpstream, write_config: MakeConfig) -> tuple[Path, Upstream]:
    up = make_upstream("alpha")
    path = write_config({"alpha": up.url})
    assert run(["-q", "sync", "-c", str(path)]) == 0
    return path, up


def test_fresh_mirrors_exit_0_with_head_branch_and_age(
    synced: tuple[Path, Upstream], capsys: pytest.CaptureFixture[str]
) -> None:
    path, up = synced
    code, out, err = status(capsys, "-c", str(path))

    assert code == 0, err
    assert "alpha" in out
    assert up.sha("main")[:12] in out
    assert "main" in out
    assert "fresh" in out
    assert "0s ago" in out or "1s ago" in out
    assert "no repository is stale or failing" in out
    assert err == ""


def test_json_says_per_repo_what_the_table_says(
    synced: tuple[Path, Upstream], capsys: pytest.CaptureFixture[str]
) -> None:
    path, up = synced
    code, out, _ = status(capsys, "-c", str(path), "--json", "--max-age", "90m")
    body = json.loads(out)

    assert code == 0
    assert body["ok"] is True
    assert body["max_age_seconds"] == 5400
    (repo,) = body["repos"]
    assert repo["slug"] == "alpha"
    assert repo["head_commit"] == up.sha("main")
    assert repo["default_branch"] == "main"
    assert repo["freshness"] == "fresh"
    assert repo["last_error"] is None
    assert repo["last_success_at"].endswith("Z")
    assert body["generated_at"].endswith("Z")


def test_a_repo_older_than_max_age_exits_1_and_is_named_on_stderr(
    synced: tuple[Path, Upstream], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = synced
    age_mirror(load_config(path).state.path, "alpha", hours=3)

    code, out, err = status(capsys, "-c", str(path), "--max-age", "2h")
    assert code == 1
    assert "stale" in out
    assert "alpha: last successful sync 3h ago, older than 2h" in err

    assert status(capsys, "-c", str(path), "--max-age", "4h")[0] == 0
    # without --max-age, the config's budget (serve.freshness_budget_minutes, 120) decides
    assert status(capsys, "-c", str(path))[0] == 1


def test_a_repo_whose_last_sync_failed_exits_1_even_when_recent(
    synced: tuple[Path, Upstream], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path, up = synced
    up.path.rename(tmp_path / "gone")
    assert run(["-q", "sync", "-c", str(path)]) == 1

    code, out, err = status(capsys, "-c", str(path))
    assert code == 1
    assert "failing" in out
    assert "alpha: its last sync failed: git ls-remote failed" in err


def test_a_repo_never_synced_exits_1(
    make_upstream: MakeUpstream, write_config: MakeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    up = make_upstream("alpha")
    path = write_config({"alpha": up.url})
    assert run(["-q", "sync", "-c", str(path)]) == 0
    path = write_config({"alpha": up.url, "newcomer": up.url})

    code, _, err = status(capsys, "-c", str(path))
    assert code == 1
    assert "newcomer: never synced successfully" in err
    assert "alpha" not in err


def test_without_a_state_file_nothing_is_created(
    make_upstream: MakeUpstream, write_config: MakeConfig, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url})
    before = tree(tmp_path)

    code, _, err = status(capsys, "-c", str(path))
    assert code == 1
    assert "no state file at" in err
    assert "alpha: never synced successfully" in err
    assert tree(tmp_path) == before
    assert not (tmp_path / "mirrors").exists()


def test_the_state_file_is_read_without_writing_anything(
    synced: tuple[Path, Upstream], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = synced
    state_dir = load_config(path).state.path.parent
    before = tree(state_dir)
    assert not [name for name in before if name.endswith(("-wal", "-shm"))]

    assert status(capsys, "-c", str(path))[0] == 0
    assert status(capsys, "-c", str(path), "--json")[0] == 0
    assert tree(state_dir) == before, "status wrote to the state directory"


def test_changes_a_writer_still_holds_in_its_wal_are_seen(
    synced: tuple[Path, Upstream], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = synced
    state = load_config(path).state.path
    with Store.open(state) as writer:  # a serve holding the file open: commits sit in the -wal file
        writer.record_mirror_failure(
            "alpha",
            upstream_url="x",
            action="failed",
            error="upstream said no",
            attempted_at=datetime.now(UTC),
        )
        assert Path(f"{state}-wal").stat().st_size > 0
        code, out, _ = status(capsys, "-c", str(path), "--json")

    assert code == 1
    assert json.loads(out)["repos"][0]["last_error"] == "upstream said no"


def test_collections_show_latest_and_stable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_catalog_config(
        tmp_path / "catalog.yaml",
        [
            Collection(
                "alpha",
                builds=[build("main", "aaaaaaa"), build("v2.0.0", "bbbbbbb")],
                stable_ref="v2.0.0",
            )
        ],
        git={"enabled": False},
    )
    assert run(["-q", "sync", "-c", str(path)]) == 0

    code, out, _ = status(capsys, "-c", str(path))
    assert code == 0
    assert "main-aaaaaaa-1111111" in out
    assert "v2.0.0-bbbbbbb-1111111" in out
    body = json.loads(status(capsys, "-c", str(path), "--json")[1])
    (cc,) = body["collections"]
    assert cc["latest"]["tag"] == "main-aaaaaaa-1111111"
    assert cc["stable"]["tag"] == "v2.0.0-bbbbbbb-1111111"
    assert cc["active_refs"] == 2
    assert "git mirroring is off (git.enabled: false): no repositories to check" in body["notes"]


def test_a_baked_mirror_is_not_judged_by_age(
    make_upstream: MakeUpstream, write_config: MakeConfig, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url})
    dest = tmp_path / "mirrors"
    dest.mkdir()
    assert run(["-q", "bake", "-c", str(path), "--dest", str(dest)]) == 0
    config = load_config(path)
    with Store.open(config.state.path) as store:  # what serve does at start-up with baked mirrors
        assert backfill(config, store, Servability(Git(redactor=Redactor()))) == 1

    code, out, _ = status(capsys, "-c", str(path), "--json", "--max-age", "1m")
    repo = json.loads(out)["repos"][0]
    assert code == 0
    assert repo["freshness"] == "baked"
    assert repo["baked_at"].endswith("Z")


@pytest.mark.parametrize("bad", ["2", "2x", "h", "-1h", "0m", ""])
def test_a_max_age_without_a_unit_is_a_usage_error(
    synced: tuple[Path, Upstream], capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    path, _ = synced
    code, out, err = status(capsys, "-c", str(path), "--max-age", bad)
    assert code == 2
    assert out == ""
    assert err.startswith("error: --max-age:")


def test_a_state_file_of_an_older_schema_is_refused_untouched(
    synced: tuple[Path, Upstream], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = synced
    state = load_config(path).state.path
    conn = sqlite3.connect(state)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = state.read_bytes()

    code, _, err = status(capsys, "-c", str(path))
    assert code == 1
    assert "older than this cccatalog's" in err
    assert "run `cccatalog sync`" in err
    assert state.read_bytes() == before
