"""Config files written for the predecessor load unchanged: with a warning for what cccatalog
ignores, never a refusal. The corpus is in tests/predecessor_configs/ (the documented file and the
shapes its deployments used), plus examples/config.airgap.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from cccatalog.config import load_config

HERE = Path(__file__).resolve().parent
CORPUS = sorted((HERE / "predecessor_configs").glob("*.yaml"))
AIRGAP_EXAMPLE = HERE.parent / "examples" / "config.airgap.yaml"

EXPECTED_WARNINGS = {
    "airgap-jfrog.yaml": {"catalog_api"},
    "bake-allow-list.yaml": {"git.codecollections[2]"},
    "connected-example.yaml": {"storage", "catalog_api"},
    "documented.yaml": {"storage"},
    "jfrog-dockerconfigjson.yaml": {"storage", "catalog_api"},
    "jfrog-token.yaml": {"sources[0].options.timeout"},
    "mirroring.yaml": {"storage"},
    "static-offline.yaml": set(),
    "upstream-chain.yaml": set(),
}


def test_the_corpus_is_the_one_this_test_knows() -> None:
    assert {p.name for p in CORPUS} == set(EXPECTED_WARNINGS)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_a_predecessor_config_loads_with_a_warning_for_each_thing_ignored(path: Path) -> None:
    config = load_config(path, environ={})
    assert config.codecollections
    assert {w.split(": ", 1)[0] for w in config.warnings} == EXPECTED_WARNINGS[path.name]
    for warning in config.warnings:
        assert "S3cretPassw0rd" not in warning


def test_the_documented_config_keeps_its_values(tmp_path: Path) -> None:
    config = load_config(HERE / "predecessor_configs" / "documented.yaml", environ={})
    assert (config.git.enabled, config.git.runtime_sync, config.git.data_dir) == (
        True,
        False,
        Path("/opt/cc-catalog/git"),
    )
    assert (config.scheduler.catalog_poll_minutes, config.scheduler.git_sync_minutes) == (5, 60)
    assert config.git.auth.token_env == "GITHUB_TOKEN"
    [source] = config.sources
    assert (source.type, source.auth.user_env, source.auth.pass_env) == ("oci", "JFROG_USER", "JFROG_PASS")
    assert config.destinations == ()  # `destinations: []`


def test_upstream_sources_of_the_corpus_name_their_catalogs() -> None:
    config = load_config(HERE / "predecessor_configs" / "upstream-chain.yaml", environ={})
    public, partner = config.sources
    assert [public.upstream_for(cc) for cc in public.codecollections] == ["https://registry.runwhen.com"] * 2
    assert public.timeout_seconds == 20
    [cc] = partner.codecollections
    assert partner.upstream_for(cc) == "https://partner-catalog.example.com"
    assert partner.timeout_seconds == 15


def test_the_airgap_example_loads_without_warnings_and_polls_no_registry() -> None:
    config = load_config(AIRGAP_EXAMPLE, environ={})
    assert config.warnings == ()
    assert not config.git.runtime_sync
    assert not config.images.runtime_sync  # its registries are ghcr.io: unreachable from the site


def test_the_mirroring_config_keeps_its_destination_and_scheduler() -> None:
    config = load_config(HERE / "predecessor_configs" / "mirroring.yaml", environ={})
    [destination] = config.destinations
    assert (destination.name, destination.type, destination.base_url) == (
        "acme-jfrog",
        "jfrog",
        "https://acme.jfrog.io",
    )
    assert (destination.repo_key, destination.path_prefix) == ("runwhen-virtual", "codecollections")
    assert destination.auth.token_env == "JFROG_ACCESS_TOKEN"
    assert destination.enable_xray_scan is False
    mirror = destination.mirror
    assert (mirror.codecollections, mirror.include_pointers, mirror.include_branches) == (
        ("*",),
        ("latest", "stable"),
        ("main",),
    )
    assert (mirror.include_semver_tags, mirror.include_pr_refs) == (True, False)
    scheduler = config.scheduler
    assert (scheduler.mirror_poll_minutes, scheduler.mirror_workers, scheduler.per_job_timeout_seconds) == (
        5,
        4,
        1800,
    )
