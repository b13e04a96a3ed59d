"""An update never takes a site backwards unless the operator says so: a replayed older update is
refused whole, an update that moves a branch back to an ancestor is refused for that repo, and the
same update imported twice is "already applied". `--allow-downgrade` applies either on purpose."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gitfixtures import Upstream, git
from tests.transferfixtures import Applied, applied_site, cli, refused

pytestmark = [pytest.mark.security, pytest.mark.slow]


@pytest.fixture
def applied(tmp_path: Path, make_upstream: Callable[[str], Upstream]) -> Applied:
    return applied_site(tmp_path, make_upstream)


def imported(applied: Applied, update: Path, *extra: str) -> dict[str, object]:
    done = cli("import", str(update), "-c", str(applied.sides.site), "--json", *extra)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def site_manifest(applied: Applied, name: str) -> Path:
    out = applied.tmp / name
    assert cli("manifest", "-c", str(applied.sides.site), "--out", str(out)).returncode == 0
    return out


def test_a_replayed_older_update_is_refused_and_the_newer_state_kept(applied: Applied) -> None:
    key = str(applied.keys.key)
    older = applied.export("t1.tar", "--sign-key", key)
    imported(applied, older)
    at_t1 = site_manifest(applied, "t1.json")
    t1 = applied.sides.site_refs("alpha")
    alpha = applied.upstreams["alpha"]
    alpha.commit("alpha at T2")
    alpha.commit("a branch born after T1", branch="feature")
    applied.sides.sync()
    newer = applied.export("t2.tar", "--sign-key", key, since=at_t1)
    imported(applied, newer)
    t2 = applied.sides.site_refs("alpha")
    assert "refs/heads/feature" in t2
    site_doc = (applied.sides.site_mirrors / "manifest.json").read_bytes()

    line = refused(applied, older)
    assert "before the one this site imported last" in line
    assert "--allow-downgrade" in line
    assert applied.sides.site_refs("alpha") == t2
    assert (applied.sides.site_mirrors / "manifest.json").read_bytes() == site_doc

    again = cli("import", str(newer), "-c", str(applied.sides.site))
    assert again.returncode == 0, again.stderr
    assert "already applied, nothing changed" in again.stderr

    assert imported(applied, older, "--allow-downgrade")["ok"] is True
    assert applied.sides.site_refs("alpha") == t1, "the operator asked for T1: T1 it is"
    assert imported(applied, newer)["ok"] is True, "and the newer update applies after it again"
    assert applied.sides.site_refs("alpha") == t2


def test_an_update_that_moves_a_branch_back_to_an_ancestor_is_refused(applied: Applied) -> None:
    key = str(applied.keys.key)
    imported(applied, applied.export("t1.tar", "--sign-key", key))
    at_t1 = site_manifest(applied, "t1.json")
    ahead = applied.sides.site_refs("alpha")["refs/heads/main"]
    alpha = applied.upstreams["alpha"]
    git("reset", "-q", "--hard", "HEAD~1", cwd=alpha.path)  # upstream (or a stale exporter) went back
    applied.sides.sync()
    behind = applied.sides.connected_refs("alpha")["refs/heads/main"]
    rewind = applied.export("back.tar", "--sign-key", key, since=at_t1)

    line = refused(applied, rewind)
    assert (
        f"alpha: the update moves refs/heads/main back from {ahead[:12]} to its ancestor {behind[:12]}"
        in line
    )
    assert "--allow-downgrade" in line
    assert applied.sides.site_refs("alpha")["refs/heads/main"] == ahead

    assert imported(applied, rewind, "--allow-downgrade")["ok"] is True
    assert applied.sides.site_refs("alpha")["refs/heads/main"] == behind
