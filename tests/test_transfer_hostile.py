"""Hostile and faulty updates against a real `import`: a tar bomb is refused before it is unpacked,
whatever signs it; a signature made for another purpose is named as such; a killed import's
unpacked update is swept by the next `serve` or `import`, never left in `$TMPDIR`."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cccatalog.signing import NAMESPACE
from tests.gitfixtures import Upstream, git
from tests.procfixtures import stopping_git
from tests.servefixtures import serve_process
from tests.transferfixtures import Applied, applied_site, cli, refused, snapshot
from tests.waiting import wait_until

pytestmark = [pytest.mark.security, pytest.mark.slow]

TIB = 1 << 40
# A bomb that got through would stop here (EFBIG) instead of filling the test machine's disk.
FILE_SIZE_LIMIT = 64 * 1024 * 1024


@pytest.fixture
def applied(tmp_path: Path, make_upstream: Callable[[str], Upstream]) -> Applied:
    return applied_site(tmp_path, make_upstream)


def unpack(update: Path, dest: Path) -> list[str]:
    with tarfile.open(update) as tar:
        names = tar.getnames()
        tar.extractall(dest, filter="data")
    return names


def repack(src: Path, names: list[str], out: Path) -> Path:
    """GNU tar, as an attacker would use it: a file with holes becomes a sparse member."""
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(out), "-C", str(src), *names], check=True)
    return out


def sign(manifest: Path, key: Path, *, namespace: str = NAMESPACE) -> None:
    manifest.with_name(manifest.name + ".sig").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", namespace, str(manifest)],
        check=True,
        capture_output=True,
    )


def bomb(applied: Applied, *, declare: int | None, resign: bool) -> Path:
    """A signed update whose alpha bundle is replaced by a 1 TiB file of holes (a 10 KiB tar). The
    manifest declares `declare` bytes for it (None: the real size, as signed); `resign`: signed again
    with the release key, as a stolen key or a faulty exporter would."""
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    work = applied.tmp / "bomb"
    names = unpack(update, work)
    bundle = work / "bundles" / "alpha.bundle"
    bundle.unlink()
    with bundle.open("wb") as f:
        f.truncate(TIB)
    if declare is not None:
        doc = json.loads((work / "manifest.json").read_text())
        [entry] = [r for r in doc["transfer"]["repos"] if r["slug"] == "alpha"]
        entry["size"] = declare
        (work / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    if resign:
        sign(work / "manifest.json", applied.keys.key)
    return repack(work, names, applied.tmp / "bomb.tar")


def refused_bounded(applied: Applied, update: Path, tmpdir: Path, *, memory: int | None = None) -> str:
    """`refused`, with the import's file size (and `memory`: its address space) capped and an empty
    `$TMPDIR` that must stay empty."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    tmpdir.mkdir(exist_ok=True)
    before = snapshot(applied.sides)
    done = subprocess.run(
        [sys.executable, "-m", "cccatalog", "import", str(update), "-c", str(applied.sides.site)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmpdir)},
        preexec_fn=limits,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert snapshot(applied.sides) == before
    assert list(tmpdir.iterdir()) == []
    assert list((applied.sides.site_mirrors / ".cccatalog" / "staging").iterdir()) == []
    return lines[0]


def test_a_bomb_behind_a_signature_that_does_not_match_is_never_unpacked(applied: Applied) -> None:
    update = bomb(applied, declare=TIB, resign=False)
    assert update.stat().st_size < 64 * 1024
    line = refused_bounded(applied, update, applied.tmp / "tmpdir")
    assert "manifest.json does not match its signature" in line


def test_a_sparse_member_is_refused_even_under_a_good_signature(applied: Applied) -> None:
    line = refused_bounded(applied, bomb(applied, declare=None, resign=False), applied.tmp / "tmpdir")
    assert "member 'bundles/alpha.bundle' is a sparse file" in line


def test_a_signed_manifest_declaring_a_tebibyte_is_refused_before_unpacking(applied: Applied) -> None:
    line = refused_bounded(applied, bomb(applied, declare=TIB, resign=True), applied.tmp / "tmpdir")
    need = int(line.split("unpacking it needs ")[1].split()[0])
    assert TIB <= need < TIB + 1_000_000
    assert "free some space in the data directory" in line


def test_an_extended_header_of_gigabytes_is_refused_before_it_is_read(applied: Applied) -> None:
    """A PAX header declaring 8 GiB ahead of everything: tarfile would read it whole into memory."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 0o77777777777
    update = applied.tmp / "pax.tar"
    with update.open("wb") as f:
        f.write(header.tobuf(tarfile.USTAR_FORMAT))
        f.truncate(tarfile.BLOCKSIZE + header.size + 2 * tarfile.BLOCKSIZE)  # holes: no disk used
    line = refused_bounded(applied, update, applied.tmp / "tmpdir", memory=1 << 30)
    assert f"an extended header of {header.size} bytes" in line


def test_a_member_longer_than_the_manifest_says_is_refused_before_it_is_written(applied: Applied) -> None:
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    work = applied.tmp / "long"
    names = unpack(update, work)
    with (work / "bundles" / "beta.bundle").open("ab") as f:
        f.write(b"\0" * 100_000)
    line = refused_bounded(applied, repack(work, names, applied.tmp / "long.tar"), applied.tmp / "tmpdir")
    assert "bundles/beta.bundle does not match its size in the manifest" in line


def test_a_signature_made_in_another_namespace_is_named_as_such(applied: Applied) -> None:
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    work = applied.tmp / "ns"
    names = unpack(update, work)
    sign(work / "manifest.json", applied.keys.key, namespace="git")
    line = refused(applied, repack(work, names, applied.tmp / "ns.tar"))
    assert "signature made for another purpose" in line
    assert NAMESPACE in line
    assert "does not match its signature" not in line
    assert "is not signed by" not in line


def test_a_killed_import_leaves_nothing_in_tmpdir_and_the_next_serve_sweeps_its_staging(
    applied: Applied,
) -> None:
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    staging = applied.sides.site_mirrors / ".cccatalog" / "staging"
    tmpdir = applied.tmp / "tmpdir"
    tmpdir.mkdir()
    stand_in = stopping_git(applied.tmp, "bundle")  # `bundle verify`, with the update unpacked
    env = {**os.environ, "TMPDIR": str(tmpdir), "PATH": stand_in.path_env()}
    argv = [sys.executable, "-m", "cccatalog", "import", str(update), "-c", str(applied.sides.site)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: stand_in.reached() or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        [live] = staging.iterdir()
        assert (live / "bundles" / "alpha.bundle").is_file()
        with serve_process(applied.sides.site):
            pass  # a serve starting while the import runs leaves the import's staging alone
        assert (live / "bundles" / "alpha.bundle").is_file()
    finally:
        proc.kill()
        proc.wait()
        if stand_in.reached():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stand_in.pid(), signal.SIGKILL)  # git runs in a session of its own
    assert list(tmpdir.iterdir()) == []
    assert live.is_dir(), "SIGKILL leaves the staging behind"
    with serve_process(applied.sides.site):
        wait_until(
            lambda: not live.exists(), 10, what="serve to remove what the killed import staged, at start"
        )
    assert list(staging.iterdir()) == []
    done = cli("import", str(update), "-c", str(applied.sides.site), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert list(staging.iterdir()) == []
    assert list(tmpdir.iterdir()) == []


def test_the_next_import_sweeps_what_a_killed_one_staged(applied: Applied) -> None:
    staging = applied.sides.site_mirrors / ".cccatalog" / "staging"
    stale = staging / "import.killed"
    (stale / "bundles").mkdir(parents=True)
    (stale / "bundles" / "alpha.bundle").write_bytes(b"x" * 1000)
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    done = cli("import", str(update), "-c", str(applied.sides.site))
    assert done.returncode == 0, done.stderr
    assert not stale.exists()
    assert list(staging.iterdir()) == []


def test_a_serve_restarted_after_a_killed_import_is_ready_and_reports_the_heads_on_disk(
    applied: Applied,
) -> None:
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    old = {slug: applied.sides.site_refs(slug) for slug in ("alpha", "beta")}
    stand_in = stopping_git(applied.tmp, "repack")  # alpha's refs moved, its upkeep and state not done
    env = {**os.environ, "PATH": stand_in.path_env()}
    argv = [sys.executable, "-m", "cccatalog", "import", str(update), "-c", str(applied.sides.site)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: stand_in.reached() or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
        if stand_in.reached():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stand_in.pid(), signal.SIGKILL)
    moved = applied.sides.site_refs("alpha")
    assert moved != old["alpha"]
    assert applied.sides.site_refs("beta") == old["beta"]

    with serve_process(applied.sides.site) as (_, url):
        ready = httpx.get(f"{url}/readyz", timeout=10)
        alpha = httpx.get(f"{url}/api/v1/git/repos/alpha", timeout=10).json()
        beta = httpx.get(f"{url}/api/v1/git/repos/beta", timeout=10).json()
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ok", "each repo is wholly old or wholly the update's"
    assert alpha["head_commit"] == moved["refs/heads/main"], "the head is what the refs say"
    assert beta["head_commit"] == old["beta"]["refs/heads/main"]

    tampered = applied.sides.site_mirrors / "beta.git"
    git("--git-dir", str(tampered), "tag", "sneaky", old["beta"]["refs/heads/main"])
    with serve_process(applied.sides.site) as (_, url):
        ready = httpx.get(f"{url}/readyz", timeout=10)
        served = httpx.get(f"{url}/git/alpha.git/info/refs?service=git-upload-pack", timeout=10)
    assert ready.status_code == 200, "one repo's state does not take the replica out of service"
    assert ready.json()["status"] == "degraded"
    assert any("beta: its refs differ from the manifest" in w for w in ready.json()["warnings"])
    assert served.status_code == 200
