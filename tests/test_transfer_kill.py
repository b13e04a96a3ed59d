"""An import killed with SIGKILL at any step leaves each mirror wholly as it was or wholly updated,
and the next import of the same file completes it.

The kill points are found with a stand-in `git` first on the import's PATH: at the Nth run of a named
git command it writes its pid to a file and waits, so the import is killed exactly there."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cccatalog.catalog.store import Store
from tests.gitfixtures import Upstream
from tests.robustfixtures import git_wrapper
from tests.transferfixtures import Sides, builds_at, cli, fsck
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

MakeUpstream = Callable[[str], Upstream]
SLUGS = ("alpha", "beta")


def blocking_git(tmp_path: Path, command: str, nth: int) -> tuple[Path, Path]:
    """A `git` that blocks at its `nth` run of `command`; returns (its directory, the pid file)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    count, reached = tmp_path / "count", tmp_path / "reached"
    snippet = (
        'for arg in "$@"; do\n'
        f'  if [ "$arg" = "{command}" ]; then\n'
        f'    echo x >> "{count}"\n'
        f'    if [ "$(wc -l < "{count}")" -eq {nth} ]; then\n'
        f'      echo $$ > "{reached}.tmp" && mv "{reached}.tmp" "{reached}"\n'
        "      while :; do sleep 1; done\n"
        "    fi\n"
        "    break\n"
        "  fi\n"
        "done"
    )
    script = git_wrapper(tmp_path, "git", snippet)
    return script.parent, reached


@pytest.mark.parametrize(
    ("command", "nth", "updated"),
    [
        ("unbundle", 1, ()),  # before alpha's objects arrive
        ("update-ref", 1, ()),  # alpha's objects are in, none of its refs moved
        ("repack", 1, ("alpha",)),  # alpha's refs moved, its upkeep not done
        ("update-ref", 2, ("alpha",)),  # alpha done, beta's objects in
        ("commit-graph", 2, SLUGS),  # both moved; beta's upkeep cut short
    ],
    ids=["before-unbundle", "before-refs", "before-upkeep", "second-repo", "last-upkeep"],
)
def test_an_import_killed_at_any_step_leaves_each_mirror_old_or_new_and_the_next_one_completes(
    tmp_path: Path, make_upstream: MakeUpstream, command: str, nth: int, updated: tuple[str, ...]
) -> None:
    ups = {slug: make_upstream(slug) for slug in SLUGS}
    sides = Sides(tmp_path / "sides", {slug: up.url for slug, up in ups.items()})
    sides.write({slug: builds_at(up.sha("main")) for slug, up in ups.items()})
    sides.sync()
    full = tmp_path / "full.tar"
    assert cli("export", "--no-images", "-c", str(sides.connected), "--out", str(full)).returncode == 0
    assert cli("import", str(full), "-c", str(sides.site), "--allow-unsigned").returncode == 0
    site_json = tmp_path / "site.json"
    assert cli("manifest", "-c", str(sides.site), "--out", str(site_json)).returncode == 0
    old = {slug: sides.site_refs(slug) for slug in SLUGS}
    for slug, up in ups.items():
        up.commit(f"{slug} moves on")
        up.commit(f"{slug} moves on again", branch="develop")
    sides.sync()
    new = {slug: sides.connected_refs(slug) for slug in SLUGS}
    update = tmp_path / "update.tar"
    done = cli(
        "export", "--no-images", "-c", str(sides.connected), "--since", str(site_json), "--out", str(update)
    )
    assert done.returncode == 0, done.stderr

    bindir, reached = blocking_git(tmp_path / "wrapper", command, nth)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    argv = [
        sys.executable,
        "-m",
        "cccatalog",
        "import",
        str(update),
        "-c",
        str(sides.site),
        "--allow-unsigned",
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: reached.exists() or proc.poll() is not None, 60), (
            "the import never got there"
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
        if reached.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(reached.read_text()), signal.SIGKILL)  # git runs in a session of its own

    for slug in SLUGS:
        assert sides.site_refs(slug) == (new[slug] if slug in updated else old[slug]), slug

    again = cli("import", str(update), "-c", str(sides.site), "--allow-unsigned", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ok"] is True
    with Store.open(sides.site.parent / "state" / "state.sqlite3") as store:
        for slug in SLUGS:
            assert sides.site_refs(slug) == new[slug], slug
            fsck(sides.site_mirrors / f"{slug}.git")
            mirror = store.get_mirror(slug)
            assert mirror is not None
            assert (mirror.last_action, mirror.head_commit) == ("imported", new[slug]["refs/heads/main"])
            packs = list((sides.site_mirrors / f"{slug}.git" / "objects" / "pack").glob("*.pack"))
            assert len(packs) == 1, "the next import finishes the upkeep the killed one left"
    third = cli("import", str(update), "-c", str(sides.site), "--allow-unsigned")
    assert third.returncode == 0
    assert "already applied, nothing changed" in third.stderr
