"""The image half of sync from `static` sources (the predecessor's static_path JSON), real state file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cccatalog.catalog.models import ImageRefRecord
from cccatalog.catalog.pointers import pointers
from cccatalog.catalog.store import Store
from cccatalog.cli import run
from cccatalog.config import load_config


def write_static(path: Path, refs: list[dict[str, object]], **names: str) -> None:
    """A static_path file; `names` are its default_ref/stable_ref (default main and v1.2.0)."""
    path.write_text(json.dumps({"default_ref": "main", "stable_ref": "v1.2.0", **names, "refs": refs}))


def entry(ref: str, tag: str, built_at: str | None, ref_type: str | None = None) -> dict[str, object]:
    commit, rt_revision = tag.split("-")[-2:]
    ref_type = ref_type or ("tag" if ref.startswith("v") else "branch")
    return {
        "ref": ref,
        "ref_type": ref_type,
        "commit": commit,
        "rt_revision": rt_revision,
        "image_tag": tag,
        "image_digest": None,
        "built_at": built_at,
    }


def synced_rows(config_path: Path) -> dict[str, ImageRefRecord]:
    assert run(["-q", "sync", "-c", str(config_path)]) == 0
    with Store.open(load_config(config_path).state.path) as store:
        return {r.ref: r for r in store.list_image_refs("cc")}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "git:\n  enabled: false\n  data_dir: mirrors\n"
        "sources:\n  - name: offline\n    type: static\n    codecollections:\n"
        "      - slug: cc\n        static_path: refs.json\n        image_registry: registry.example.com/cc\n"
    )
    return path


def test_static_refs_become_one_row_per_ref_with_latest_and_stable(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_static(
        config_path.parent / "refs.json",
        [
            entry("main", "main-aaaaaaa-1111111", "2026-01-01T00:00:00Z"),
            entry("main", "main-bbbbbbb-1111111", "2026-02-01T00:00:00Z"),
            entry("v1.2.0-rc1", "v1.2.0-rc1-ccccccc-1111111", "2026-03-01T00:00:00Z"),
            entry("v1.2.0", "v1.2.0-ddddddd-1111111", "2026-02-15T00:00:00Z"),
            entry("v1.1.0", "v1.1.0-eeeeeee-1111111", None),
        ],
    )
    assert run(["sync", "-c", str(config_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"][0]["latest_tag"] == "main-bbbbbbb-1111111"
    assert summary["images"][0]["stable_tag"] == "v1.2.0-ddddddd-1111111"
    with Store.open(load_config(config_path).state.path) as store:
        rows = {r.ref: r for r in store.list_image_refs("cc")}
    assert set(rows) == {"main", "v1.2.0-rc1", "v1.2.0", "v1.1.0"}
    assert [r.ref for r in rows.values() if r.is_latest] == ["main"]
    assert [r.ref for r in rows.values() if r.is_stable] == ["v1.2.0"]
    assert rows["v1.2.0-rc1"].is_prerelease
    assert rows["v1.2.0"].ref_type == "tag"
    assert rows["main"].image_registry == "registry.example.com/cc"


def test_the_files_stable_ref_is_stable_even_below_the_highest_release(config_path: Path) -> None:
    write_static(
        config_path.parent / "refs.json",
        [
            entry("main", "main-aaaaaaa-1111111", None),
            entry("v1.3.0", "v1.3.0-bbbbbbb-1111111", None),
            entry("v1.1.0", "v1.1.0-ccccccc-1111111", None),
        ],
        stable_ref="v1.1.0",
    )
    rows = synced_rows(config_path)
    assert pointers(list(rows.values()))[1] == rows["v1.1.0"]
    assert [r.ref for r in rows.values() if r.is_stable] == ["v1.1.0"]


def test_without_a_stable_ref_in_the_file_stable_is_latest_as_before(config_path: Path) -> None:
    refs = [entry("main", "main-aaaaaaa-1111111", None), entry("v1.3.0", "v1.3.0-bbbbbbb-1111111", None)]
    (config_path.parent / "refs.json").write_text(json.dumps({"default_ref": "main", "refs": refs}))
    rows = synced_rows(config_path)
    latest, stable = pointers(list(rows.values()))
    assert latest == stable == rows["main"]
    assert rows["main"].is_prerelease is False  # the stable row is no pre-release, branch or not


def test_the_files_default_ref_names_latest(config_path: Path) -> None:
    write_static(
        config_path.parent / "refs.json",
        [entry("main", "main-aaaaaaa-1111111", None), entry("develop", "develop-bbbbbbb-1111111", None)],
        default_ref="develop",
    )
    rows = synced_rows(config_path)
    assert [r.ref for r in rows.values() if r.is_latest] == ["develop"]


def test_among_undated_entries_of_a_ref_the_last_listed_wins(config_path: Path) -> None:
    write_static(
        config_path.parent / "refs.json",
        [
            entry("main", "main-fffffff-1111111", None),  # the highest tag string, listed first
            entry("main", "main-aaaaaaa-1111111", None),
            entry("dev", "dev-aaaaaaa-1111111", "2026-01-01T00:00:00Z"),  # a dated entry beats
            entry("dev", "dev-bbbbbbb-1111111", None),  # an undated one listed after it
        ],
    )
    rows = synced_rows(config_path)
    assert rows["main"].image_tag == "main-aaaaaaa-1111111"
    assert rows["dev"].image_tag == "dev-aaaaaaa-1111111"


@pytest.mark.parametrize(
    ("ref", "ref_type", "prerelease"),
    [
        ("main", "branch", True),
        ("develop", "branch", True),
        ("feat-x", "branch", True),
        ("pr-42", "branch", True),
        ("feature/login", "branch", True),
        ("v1.2.0", "tag", False),
        ("v1.1.0", "tag", False),
        ("v1.2.0-rc1", "tag", True),  # a release candidate, though a tag
    ],
)
def test_every_branch_build_and_release_candidate_is_a_prerelease(
    config_path: Path, ref: str, ref_type: str, prerelease: bool
) -> None:
    refs = [
        entry(r, f"{r.replace('/', '-')}-aaaaaaa-1111111", None, t)
        for r, t in [("main", "branch"), ("v1.2.0", "tag"), (ref, ref_type)]
    ]
    write_static(config_path.parent / "refs.json", refs)
    rows = synced_rows(config_path)
    assert (rows[ref].ref_type, rows[ref].is_prerelease) == (ref_type, prerelease)


def test_refs_that_vanish_become_inactive_but_an_empty_listing_keeps_them(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs_file = config_path.parent / "refs.json"
    write_static(
        refs_file, [entry("main", "main-aaaaaaa-1111111", None), entry("dev", "dev-bbbbbbb-1111111", None)]
    )
    assert run(["sync", "-c", str(config_path)]) == 0
    write_static(refs_file, [entry("main", "main-aaaaaaa-1111111", None)])
    assert run(["sync", "-c", str(config_path)]) == 0
    state = load_config(config_path).state.path
    with Store.open(state) as store:
        assert [r.ref for r in store.list_image_refs("cc")] == ["main"]
        assert {r.ref: r.is_active for r in store.list_image_refs("cc", include_inactive=True)} == {
            "dev": False,
            "main": True,
        }
    capsys.readouterr()
    write_static(refs_file, [])
    assert run(["sync", "-c", str(config_path), "--json"]) == 0
    assert "transient" in json.loads(capsys.readouterr().out)["images"][0]["note"]
    with Store.open(state) as store:
        assert [r.ref for r in store.list_image_refs("cc")] == ["main"]


def test_a_broken_static_file_fails_the_collection_and_keeps_its_refs(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs_file = config_path.parent / "refs.json"
    write_static(refs_file, [entry("main", "main-aaaaaaa-1111111", None)])
    assert run(["sync", "-c", str(config_path)]) == 0
    capsys.readouterr()
    refs_file.write_text("{not json")
    assert run(["sync", "-c", str(config_path), "--json"]) == 1
    assert "invalid JSON" in json.loads(capsys.readouterr().out)["images"][0]["error"]
    state = load_config(config_path).state.path
    with Store.open(state) as store:
        assert [r.ref for r in store.list_image_refs("cc")] == ["main"]
        status = store.get_image_sync("cc")
    assert status is not None
    assert status.error is not None
    assert "invalid JSON at line 1" in status.error
