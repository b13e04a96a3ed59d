"""The `destinations:` block: the predecessor's keys load unchanged, every problem is named by its
key path, and secrets are only ever environment variable names."""

from __future__ import annotations

from pathlib import Path

import pytest

from cccatalog.config import parse_config
from cccatalog.errors import ConfigError

SOURCE = {
    "name": "ghcr",
    "type": "oci",
    "codecollections": [{"slug": "rw-cli-codecollection", "image_registry": "ghcr.io/org/rw-cli"}],
}


def config_with(*destinations: object) -> dict[str, object]:
    return {"sources": [SOURCE], "destinations": list(destinations)}


def problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, path=Path("/etc/cc/config.yaml"))
    return info.value.problems


def test_a_registry_destination_has_its_host_and_prefix() -> None:
    config = parse_config(
        config_with({"name": "site", "type": "registry", "registry": "registry.example.com:5000/cc/images"}),
        path=Path("/etc/cc/config.yaml"),
    )
    [destination] = config.destinations
    assert (destination.host, destination.repository_prefix) == ("registry.example.com:5000", "cc/images")
    assert destination.auth.as_auth().is_anonymous
    assert config.destination("site") is destination
    assert config.destination("other") is None


def test_type_defaults_to_jfrog_as_in_the_predecessor() -> None:
    config = parse_config(
        config_with({"name": "a", "base_url": "https://acme.jfrog.io/", "repo_key": "docker-local"}),
        path=Path("/etc/cc/config.yaml"),
    )
    [destination] = config.destinations
    assert (destination.type, destination.base_url, destination.repository_prefix) == (
        "jfrog",
        "https://acme.jfrog.io",
        "docker-local",
    )


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        (
            {"base_url": "https://a.io", "repo_key": "r"},
            "destinations[0].name: is required (a non-empty string)",
        ),
        ({"name": "a", "repo_key": "r"}, "destinations[0].base_url: is required (a non-empty string)"),
        (
            {"name": "a", "base_url": "https://a.io"},
            "destinations[0].repo_key: is required (a non-empty string)",
        ),
        (
            {"name": "a", "type": "ecr", "registry": "x.io/a"},
            "destinations[0].type: expected 'jfrog' or 'registry', got 'ecr'",
        ),
        (
            {"name": "a", "base_url": "https://u:pw@a.io", "repo_key": "r"},
            "destinations[0].base_url: 'https://***@a.io' embeds credentials; "
            "name them in destinations[0].auth",
        ),
        (
            {"name": "a", "base_url": "http://acme.jfrog.io", "repo_key": "r"},
            "destinations[0].base_url: plain http is only used for a loopback Artifactory; use https://",
        ),
        (
            {"name": "a", "base_url": "https://a.io/artifactory", "repo_key": "r"},
            "destinations[0].base_url: expected the Artifactory URL without a path, like "
            "https://acme.jfrog.io; got 'https://a.io/artifactory'",
        ),
        (
            {"name": "a", "base_url": "https://a.io", "repo_key": "Docker Local"},
            "destinations[0].repo_key: expected a repository path (lowercase letters, digits and . _ - "
            "between slashes), got 'Docker Local'",
        ),
        (
            {"name": "a", "type": "registry", "registry": "cc/images"},
            "destinations[0].registry: expected host[:port]/prefix with a registry host, like "
            "registry.example.com/cc; got 'cc/images'",
        ),
        (
            {"name": "a", "type": "registry", "registry": "x.io/a", "repo_key": "r"},
            "destinations[0].repo_key: is not a key of a registry destination (only of jfrog ones)",
        ),
        (
            {"name": "a", "base_url": "https://a.io", "repo_key": "r", "auth": {"token_env": "x y"}},
            "destinations[0].auth.token_env: expected the NAME of an environment variable holding the "
            "secret, not the secret",
        ),
        (
            {
                "name": "a",
                "base_url": "https://a.io",
                "repo_key": "r",
                "auth": {"token_env": "T", "docker_config_env": "D"},
            },
            "destinations[0].auth: set only one of token_env, user_env+pass_env, docker_config_env",
        ),
        (
            {"name": "a", "base_url": "https://a.io", "repo_key": "r", "auth": {"user_env": "U"}},
            "destinations[0].auth: user_env is set without pass_env; set both",
        ),
        (
            {
                "name": "a",
                "base_url": "https://a.io",
                "repo_key": "r",
                "mirror": {"include_pointers": ["newest"]},
            },
            "destinations[0].mirror.include_pointers: expected latest and/or stable, got 'newest'",
        ),
        (
            {
                "name": "a",
                "base_url": "https://a.io",
                "repo_key": "r",
                "mirror": {"include_branches": "main"},
            },
            "destinations[0].mirror.include_branches: expected a list, got 'main'",
        ),
        (
            {"name": "a", "base_url": "https://a.io", "repo_key": "r", "mirror": {"include_tags": True}},
            "destinations[0].mirror.include_tags: unknown key (expected one of: codecollections, "
            "include_branches, include_pointers, include_pr_refs, include_semver_tags); did you mean "
            "include_semver_tags?",
        ),
        (
            {"name": "a", "base_url": "https://a.io", "repo_key": "r", "crane": True},
            "destinations[0].crane: unknown key (expected one of: auth, base_url, enable_xray_scan, mirror, "
            "name, path_prefix, registry, repo_key, type)",
        ),
    ],
)
def test_each_problem_is_named_by_its_key_path(destination: dict[str, object], expected: str) -> None:
    assert problems(config_with(destination)) == [expected]


def test_a_destination_name_is_unique() -> None:
    one = {"name": "a", "type": "registry", "registry": "x.io/a"}
    assert problems(config_with(one, one)) == [
        "destinations[1].name: duplicate destination name 'a' (first defined at destinations[0].name)"
    ]


def test_a_secret_written_where_a_variable_name_belongs_is_never_echoed() -> None:
    secret = "ghp_" + "a" * 36
    found = problems(
        config_with({"name": "a", "base_url": "https://a.io", "repo_key": "r", "auth": {"token_env": secret}})
    )
    assert found
    assert all(secret not in p for p in found)


def test_an_unknown_slug_in_the_filter_warns_and_names_the_closest() -> None:
    config = parse_config(
        config_with(
            {
                "name": "a",
                "base_url": "https://a.io",
                "repo_key": "r",
                "mirror": {"codecollections": ["rw-cli-codecolection"], "include_branches": []},
            }
        ),
        path=Path("/etc/cc/config.yaml"),
    )
    assert config.warnings == (
        "destinations[0].mirror.codecollections: 'rw-cli-codecolection' is not a slug of any configured "
        "CodeCollection; nothing is mirrored for it; did you mean rw-cli-codecollection?",
    )
    mirror = config.destinations[0].mirror
    assert mirror.include_branches == ()
    assert not mirror.tracks("rw-cli-codecollection")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "mirror_poll_minutes",
            -1,
            "scheduler.mirror_poll_minutes: expected an integer from 0 to 1440, got -1",
        ),
        ("mirror_workers", 0, "scheduler.mirror_workers: expected an integer from 1 to 32, got 0"),
        (
            "per_job_timeout_seconds",
            5,
            "scheduler.per_job_timeout_seconds: expected an integer from 10 to 3600, got 5",
        ),
    ],
)
def test_scheduler_mirror_keys_have_the_predecessors_ranges(key: str, value: int, expected: str) -> None:
    assert problems({"sources": [SOURCE], "scheduler": {key: value}}) == [expected]


def test_check_names_a_destinations_unset_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from cccatalog.cli import run

    path = tmp_path / "config.yaml"
    path.write_text(
        "git: {enabled: false, data_dir: mirrors}\n"
        "sources: [{name: s, type: static, codecollections: [{slug: a, static_path: a.json}]}]\n"
        "destinations:\n  - {name: acme, base_url: https://acme.jfrog.io, repo_key: docker,\n"
        "     auth: {user_env: CCTEST_JFROG_USER, pass_env: CCTEST_JFROG_PASS}}\n"
    )
    assert run(["check", "-c", str(path), "--json"]) == 1
    checks = {c["subject"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["destinations[0].auth.user_env"]["status"] == "fail"
    assert "CCTEST_JFROG_PASS is not set" in checks["destinations[0].auth.pass_env"]["detail"]
