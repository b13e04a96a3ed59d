"""`cccatalog import` refuses a bad update in one line, exit 2, and changes nothing: tampered bytes,
a wrong or missing signature, commits the site lacks, another set of collections."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.gitfixtures import Upstream
from tests.transferfixtures import SIGNER, Applied, applied_site, cli, refused

MakeUpstream = Callable[[str], Upstream]


@pytest.fixture
def applied(tmp_path: Path, make_upstream: MakeUpstream) -> Applied:
    return applied_site(tmp_path, make_upstream)


def flip_byte(update: Path, member: str, *, at: float = 0.5) -> Path:
    """A copy of `update` with one byte of `member` changed."""
    with tarfile.open(update) as tar:
        entries = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]  # type: ignore[union-attr]
    out = update.with_name(f"tampered-{update.name}")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            i = int(len(data) * at)
            changed = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :] if info.name == member else data
            tar.addfile(info, io.BytesIO(changed))
    return out


def test_a_bundle_with_one_byte_flipped_is_refused(applied: Applied) -> None:
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    line = refused(applied, flip_byte(update, "bundles/alpha.bundle"))
    assert "bundles/alpha.bundle does not match its sha256 in the manifest" in line


def test_a_manifest_changed_after_signing_is_refused(applied: Applied) -> None:
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    line = refused(applied, flip_byte(update, "manifest.json", at=0.9))
    assert "manifest.json does not match its signature" in line


def test_an_update_signed_by_a_key_nobody_allowed_is_refused(applied: Applied) -> None:
    update = applied.export("u.tar", "--sign-key", str(applied.keys.other))
    line = refused(applied, update)
    assert f"is not signed by {SIGNER}" in line


def test_a_signer_other_than_the_one_named_is_refused(applied: Applied) -> None:
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    line = refused(applied, update, "--signer", "someone@example.org")
    assert "is not signed by someone@example.org" in line


def test_any_listed_signer_is_accepted_when_none_is_named(applied: Applied) -> None:
    config = applied.sides.site
    config.write_text(config.read_text().replace(f"  signer: {SIGNER}\n", ""))
    other = applied.export("other.tar", "--sign-key", str(applied.keys.other))
    line = refused(applied, other)
    assert "is signed by a key that" in line
    assert "does not list" in line
    good = applied.export("good.tar", "--sign-key", str(applied.keys.key))
    done = cli("import", str(good), "-c", str(config), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["signed_by"] == SIGNER


def test_an_unsigned_update_is_refused_unless_allowed(applied: Applied) -> None:
    update = applied.export("u.tar")
    line = refused(applied, update)
    assert "the update is not signed" in line
    assert "--allow-unsigned" in line
    done = cli("import", str(update), "-c", str(applied.sides.site), "--allow-unsigned")
    assert done.returncode == 0, done.stderr


def test_an_update_built_on_commits_the_site_lacks_names_the_commit(applied: Applied) -> None:
    connected_now = applied.tmp / "connected.json"
    assert cli("manifest", "-c", str(applied.sides.connected), "--out", str(connected_now)).returncode == 0
    needed = json.loads(connected_now.read_text())["repos"][0]["refs"]["refs/heads/main"]
    applied.upstreams["alpha"].commit("alpha at T2")
    applied.sides.sync()
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key), since=connected_now)
    line = refused(applied, update)
    assert f"alpha: this site's mirror lacks commit {needed}" in line
    assert "export --since this site's manifest" in line


def test_an_update_for_other_collections_names_them(applied: Applied) -> None:
    update = applied.export("u.tar", "--sign-key", str(applied.keys.key))
    config = applied.sides.site
    doc = yaml.safe_load(config.read_text())
    [source] = doc["sources"]
    source["codecollections"] = [cc for cc in source["codecollections"] if cc["slug"] != "beta"]
    config.write_text(yaml.safe_dump(doc))
    line = refused(applied, update)
    assert "only in the update: beta" in line


def test_a_file_that_is_not_an_update_is_refused(applied: Applied) -> None:
    junk = applied.tmp / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    assert "not a cccatalog update" in refused(applied, junk)
