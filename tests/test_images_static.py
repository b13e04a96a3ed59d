"""The image half of sync from `static` sources (the predecessor's static_path JSON), real state file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cccatalog.catalog.store import Store
from cccatalog.cli import run
from cccatalog.config import load_config


def write_static(path: Path, refs: list[dict[str, object]]) -> None:
    path.write_text(json.dumps({"default_ref": "main", "stable_ref": "v1.2.0", "refs": refs}))


def entry(ref: str, tag: str, built_at: str | None) -> dict[str, object]:
    commit, rt_revision = tag.split("-")[-2:]
    return {"ref": ref, "ref_type": "branch", "commit": commit, "rt_revision": rt_revision,
            "image_tag": tag, "image_digest": None, "built_at": built_at}  # fmt: skip


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
    assert rows["v1.2.0-rc1"].is_prerelease
    assert rows["v1.2.0"].ref_type == "tag"
    assert rows["main"].image_registry == "registry.example.com/cc"


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
            "dev": False, "main": True,
        }  # fmt: skip
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
