"""Config loading: the predecessor's files load unchanged; every problem is reported with its key path."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cccatalog.config import (
    Config,
    GitConfig,
    SchedulerConfig,
    StateConfig,
    config_path_from_env,
    load_config,
    parse_config,
)
from cccatalog.errors import ConfigError

SLUG_RULE = (
    "letters, digits, '.', '_', '-'; must start with a letter or digit; at most 200 characters; "
    "must not end in .git"
)

BAKE_CONFIG = """\
scheduler: {catalog_poll_minutes: 5, git_sync_minutes: 60}
git:
  enabled: true
  data_dir: /opt/cc-catalog/git
  mount_path: /git
  public_base_url: https://cc-catalog.example.com/git/
  runtime_sync: false
  auth: {token_env: GITHUB_TOKEN}
  codecollections: []
  clone_timeout_seconds: 900
  fetch_timeout_seconds: 600
sources:
  - name: ghcr-runwhen-contrib
    type: oci
    codecollections:
      - slug: rw-cli-codecollection
        name: RunWhen CLI CodeCollection
        git_url: https://github.com/runwhen-contrib/rw-cli-codecollection
        image_registry: ghcr.io/runwhen-contrib/rw-cli-codecollection
        default_ref: main
        visibility: public
      - slug: rw-public-codecollection
        git_url: https://github.com/runwhen-contrib/rw-public-codecollection
        image_registry: ghcr.io/runwhen-contrib/rw-public-codecollection
      - slug: rw-generic-codecollection
        git_url: https://github.com/runwhen-contrib/rw-generic-codecollection
        image_registry: ghcr.io/runwhen-contrib/rw-generic-codecollection
      - slug: rw-workspace-utils
        git_url: https://github.com/runwhen-contrib/rw-workspace-utils
        image_registry: ghcr.io/runwhen-contrib/rw-workspace-utils
      - slug: aws-c7n-codecollection
        git_url: https://github.com/runwhen-contrib/aws-c7n-codecollection
        image_registry: ghcr.io/runwhen-contrib/aws-c7n-codecollection
      - slug: azure-c7n-codecollection
        git_url: https://github.com/runwhen-contrib/azure-c7n-codecollection
        image_registry: ghcr.io/runwhen-contrib/azure-c7n-codecollection
      - slug: ss-rw-cli-codecollection
        name: Fork of rw-cli-codecollection
        git_url: https://github.com/stewartshea/rw-cli-codecollection
        image_registry: ghcr.io/runwhen-contrib/ss-rw-cli-codecollection
        visibility: hidden
destinations: []
"""

ONE_SOURCE = """\
sources:
  - name: src
    type: oci
    codecollections:
      - slug: a
        git_url: https://github.com/org/a
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ=environ or {})


def problems_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    return info.value.problems


def one_source(**collection: object) -> dict[str, object]:
    """Raw config data with one oci source holding one collection."""
    cc = {"slug": "a", **collection}
    return {"sources": [{"name": "src", "type": "oci", "codecollections": [cc]}]}


# --- the predecessor's files --------------------------------------------------------------------------


def test_predecessor_bake_config_loads_unchanged_with_its_values(tmp_path: Path) -> None:
    config = load(tmp_path, BAKE_CONFIG)

    assert [cc.slug for cc in config.codecollections] == [
        "rw-cli-codecollection",
        "rw-public-codecollection",
        "rw-generic-codecollection",
        "rw-workspace-utils",
        "aws-c7n-codecollection",
        "azure-c7n-codecollection",
        "ss-rw-cli-codecollection",
    ]
    git = config.git
    assert git.enabled is True
    assert git.data_dir == Path("/opt/cc-catalog/git")
    assert git.mount_path == "/git"
    assert git.public_base_url == "https://cc-catalog.example.com/git"
    assert git.runtime_sync is False
    assert git.auth.token_env == "GITHUB_TOKEN"
    assert not git.auth.is_anonymous
    assert git.codecollections == ()
    assert (git.clone_timeout_seconds, git.fetch_timeout_seconds) == (900, 600)
    assert (git.refs, git.parallelism, git.lock_timeout_seconds) == ("branches-and-tags", 4, 600)
    assert (config.scheduler.catalog_poll_minutes, config.scheduler.git_sync_minutes) == (5, 60)
    assert config.state.path == Path("/opt/cc-catalog/git/.cccatalog/state.sqlite3")
    assert config.path == tmp_path / "config.yaml"
    assert config.warnings == ()
    assert config.destinations == ()
    source = config.sources[0]
    assert (source.name, source.type, source.auth.is_anonymous) == ("ghcr-runwhen-contrib", "oci", True)
    fork = config.collection("ss-rw-cli-codecollection")
    assert fork is not None
    assert fork.git_url == "https://github.com/stewartshea/rw-cli-codecollection"
    assert (fork.source, fork.visibility, fork.default_ref) == ("ghcr-runwhen-contrib", "hidden", "main")
    first = config.codecollections[0]
    assert first.name == "RunWhen CLI CodeCollection"
    assert first.image_registry == "ghcr.io/runwhen-contrib/rw-cli-codecollection"
    assert [cc.name for cc in config.codecollections[1:6]] == [None] * 5


def test_predecessor_mirroring_keys_load_and_are_used(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        scheduler:
          catalog_poll_minutes: 10
          mirror_poll_minutes: 30
          mirror_workers: 4
          per_job_timeout_seconds: 1800
        git: {enabled: false}
        sources:
          - name: jfrog
            type: oci
            auth: {user_env: JFROG_USER, pass_env: JFROG_PASS}
            codecollections:
              - {slug: rw-cli-codecollection, image_registry: example.jfrog.io/cc/rw-cli-codecollection}
        destinations:
          - {name: jfrog, base_url: https://example.jfrog.io, repo_key: cc,
             auth: {user_env: JFROG_USER, pass_env: JFROG_PASS}}
        storage: {url: "s3://bucket/catalog"}
        catalog_api: {host: 0.0.0.0, port: 8000}
        """,
    )

    assert config.scheduler.catalog_poll_minutes == 10
    assert config.scheduler.git_sync_minutes == 60  # the predecessor's default
    assert (config.scheduler.mirror_poll_minutes, config.scheduler.mirror_workers) == (30, 4)
    assert config.scheduler.per_job_timeout_seconds == 1800
    assert config.sources[0].auth.user_env == "JFROG_USER"
    assert config.sources[0].auth.pass_env == "JFROG_PASS"
    [destination] = config.destinations
    assert (destination.name, destination.type, destination.host) == ("jfrog", "jfrog", "example.jfrog.io")
    assert [w.split(":")[0] for w in config.warnings] == ["storage", "catalog_api"]
    assert all(": ignored — " in w for w in config.warnings)


# --- reporting ----------------------------------------------------------------------------------------


def test_every_problem_in_the_file_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        git:
          enabled: "yes"
          parallelism: 0
          auth: {token_env: GITHUB_TOKEN, dockerconfigjson_env: DOCKER_CONFIG}
        sources:
          - name: src
            type: ocii
            codecollections:
              - slug: Bad Slug!
        soruces: []
        """,
    )

    assert sorted(problems) == sorted(
        [
            "soruces: unknown key (expected one of: destinations, git, images, scheduler, serve, sources, "
            "state, transfer); "
            "did you mean sources?",
            "sources[0].type: expected 'oci', 'static' or 'upstream', got 'ocii'",
            f"sources[0].codecollections[0].slug: 'Bad Slug!' is not a valid slug ({SLUG_RULE})",
            "git.enabled: expected true or false, got 'yes'",
            "git.parallelism: expected an integer from 1 to 64, got 0",
            "git.auth: set only one of token_env, user_env+pass_env, dockerconfigjson_env",
        ]
    )
    assert all("\n" not in p for p in problems)


def test_config_error_names_the_file_and_lists_one_problem_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "git: {enabled: 1, parallelism: 99}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})

    assert info.value.source == str(path)
    assert str(info.value).splitlines() == [
        f"{path}: 2 config problems:",
        "  git.enabled: expected true or false, got 1",
        "  git.parallelism: expected an integer from 1 to 64, got 99",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "soruces: []\n",
            "soruces: unknown key (expected one of: destinations, git, images, scheduler, serve, sources, "
            "state, transfer); "
            "did you mean sources?",
        ),
        (
            "zzz: 1\n",
            "zzz: unknown key (expected one of: destinations, git, images, scheduler, serve, sources, state, "
            "transfer)",
        ),
        ("git: {enabeld: true}\n", "git.enabeld: unknown key (expected one of: "),
        ("git: {auth: {tokn_env: X}}\n", "git.auth.tokn_env: unknown key (expected one of: "),
        ("state: {paht: x}\n", "state.paht: unknown key (expected one of: path, url); did you mean path?"),
        (
            "sources: [{name: s, type: oci, options: {plain-http: true}}]\n",
            "sources[0].options.plain-http: unknown key "
            "(expected one of: plain_http, timeout, upstream_url); "
            "did you mean plain_http?",
        ),
        (
            "sources: [{name: s, type: oci, codecollections: [{slug: a, git_ulr: x}]}]\n",
            "sources[0].codecollections[0].git_ulr: unknown key (expected one of: ",
        ),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion_when_one_is_close(
    tmp_path: Path, text: str, expected: str
) -> None:
    [problem] = problems_of(tmp_path, text)
    assert problem.startswith(expected)
    assert ("did you mean" in problem) == (not text.startswith("zzz"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('git: {enabled: "yes"}', "git.enabled: expected true or false, got 'yes'"),
        ("git: {runtime_sync: 0}", "git.runtime_sync: expected true or false, got 0"),
        ("git: {parallelism: true}", "git.parallelism: expected an integer from 1 to 64, got true"),
        ("git: {parallelism: 2.5}", "git.parallelism: expected an integer from 1 to 64, got 2.5"),
        (
            'git: {clone_timeout_seconds: "900"}',
            "git.clone_timeout_seconds: expected an integer from 30 to 7200, got '900'",
        ),
        (
            "git: {fetch_timeout_seconds: 3601}",
            "git.fetch_timeout_seconds: expected an integer from 30 to 3600, got 3601",
        ),
        (
            "git: {lock_timeout_seconds: -1}",
            "git.lock_timeout_seconds: expected an integer from 0 to 86400, got -1",
        ),
        ("git: {refs: heads}", "git.refs: expected 'branches-and-tags' or 'all', got 'heads'"),
        ("git: {data_dir: 5}", "git.data_dir: expected a non-empty string, got 5"),
        ("git: {data_dir: ''}", "git.data_dir: expected a non-empty string, got ''"),
        ("git: [1]", "git: expected a mapping, got a list"),
        ("git: {auth: [x]}", "git.auth: expected a mapping, got a list"),
        ("git: {codecollections: a}", "git.codecollections: expected a list, got 'a'"),
        ("git: {mount_path: git}", "git.mount_path: expected an absolute URL path such as /git, got 'git'"),
        ("git: {mount_path: /}", "git.mount_path: expected an absolute URL path such as /git, got '/'"),
        ("git: {mount_path: /a/../b}", "git.mount_path: expected an absolute URL path such as /git"),
        ("git: {mount_path: /api}", "git.mount_path: expected an absolute URL path such as /git"),
        (
            "git: {public_base_url: 'ftp://h/git'}",
            "git.public_base_url: 'ftp://h/git' has an unsupported scheme (expected https://, http://)",
        ),
        (
            "scheduler: {git_sync_minutes: -1}",
            "scheduler.git_sync_minutes: expected an integer from 0 to 1440, got -1",
        ),
        (
            "scheduler: {catalog_poll_minutes: 1441}",
            "scheduler.catalog_poll_minutes: expected an integer from 0 to 1440, got 1441",
        ),
        (
            "sources: [{name: s, type: upstream, options: {timeout: 0}}]",
            "sources[0].options.timeout: expected a number of seconds from 1 to 3600, got 0",
        ),
        (
            "sources: [{name: s, type: upstream, options: {timeout: '15'}}]",
            "sources[0].options.timeout: expected a number of seconds from 1 to 3600, got '15'",
        ),
        (
            "sources: [{name: s, type: upstream, codecollections: [{slug: a, upstream_url: 'ftp://h'}]}]",
            "sources[0].codecollections[0].upstream_url: 'ftp://h' has an unsupported scheme",
        ),
        ("images: {runtime_sync: 'no'}", "images.runtime_sync: expected true or false, got 'no'"),
        (
            "serve: {max_queued_upload_packs: -1}",
            "serve.max_queued_upload_packs: expected an integer from 0 to 65536, got -1",
        ),
        (
            "serve: {max_queue_wait_seconds: 0}",
            "serve.max_queue_wait_seconds: expected an integer from 1 to 3600, got 0",
        ),
        (
            "serve: {pack_cache_mb: '1G'}",
            "serve.pack_cache_mb: expected an integer from 0 to 1048576, got '1G'",
        ),
        ("serve: {pack_cache_dir: ''}", "serve.pack_cache_dir: expected a non-empty string, got ''"),
        ("images: {enabled: false}", "images.enabled: unknown key (expected one of: runtime_sync)"),
        ("scheduler: 5", "scheduler: expected a mapping, got 5"),
        ("state: {path: 3}", "state.path: expected a non-empty string, got 3"),
        ("sources: {name: a}", "sources: expected a list, got a mapping"),
        ("sources: [x]", "sources[0]: expected a mapping, got 'x'"),
        ("sources: [{type: oci}]", "sources[0].name: is required (a non-empty string)"),
        ("sources: [{name: s}]", "sources[0].type: is required ('oci', 'static' or 'upstream')"),
        (
            "sources: [{name: s, type: oci, options: {plain_http: 'true'}}]",
            "sources[0].options.plain_http: expected true or false, got 'true'",
        ),
        (
            "sources: [{name: s, type: oci, options: {upstream_url: 'https://u:pw@cat.example.com'}}]",
            "sources[0].options.upstream_url: 'https://***@cat.example.com' embeds credentials; "
            "credentials belong in environment variables named by sources[0].auth",
        ),
        (
            "sources: [{name: s, type: oci, codecollections: {}}]",
            "sources[0].codecollections: expected a list",
        ),
        (
            "sources: [{name: s, type: oci, codecollections: [{git_url: 'https://h/x'}]}]",
            "sources[0].codecollections[0].slug: is required (a non-empty string)",
        ),
        (
            "sources: [{name: s, type: oci, codecollections: [{slug: a, visibility: private}]}]",
            "sources[0].codecollections[0].visibility: expected 'public' or 'hidden', got 'private'",
        ),
        (
            "sources: [{name: s, type: oci, codecollections: [{slug: a, default_ref: ''}]}]",
            "sources[0].codecollections[0].default_ref: expected a non-empty string, got ''",
        ),
        (
            "sources: [{name: s, type: oci, codecollections: [{slug: a, image_registry: 'https://ghcr.io/o/a'}]}]",
            "sources[0].codecollections[0].image_registry: expected host/path without a scheme, "
            "like ghcr.io/org/repo; got 'https://ghcr.io/o/a'",
        ),
    ],
)
def test_wrong_types_and_values_are_reported_with_key_path_and_what_was_found(
    tmp_path: Path, text: str, expected: str
) -> None:
    [problem] = problems_of(tmp_path, text + "\n")
    assert problem.startswith(expected)


def test_yaml_booleans_like_yes_are_accepted_for_flags(tmp_path: Path) -> None:
    config = load(tmp_path, "git: {enabled: yes, runtime_sync: off}\n")
    assert (config.git.enabled, config.git.runtime_sync) == (True, False)


# --- slugs and sources --------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["-a", "a.git", "a/b", "../x", "a" * 201, "a b", "Bad Slug!", ".hidden"])
def test_invalid_slugs_are_refused_with_the_rule(tmp_path: Path, slug: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(one_source(slug=slug), path=tmp_path / "config.yaml")

    [problem] = info.value.problems
    assert problem.startswith("sources[0].codecollections[0].slug: '")
    assert problem.endswith(f"' is not a valid slug ({SLUG_RULE})")


def test_empty_slug_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(one_source(slug=""), path=tmp_path / "config.yaml")
    assert info.value.problems == ["sources[0].codecollections[0].slug: expected a non-empty string, got ''"]


@pytest.mark.parametrize(
    ("raw", "slug"),
    [("a", "a"), ("A1", "A1"), ("a.b_c-d", "a.b_c-d"), ("x" * 200, "x" * 200), ("  padded \n", "padded")],
)
def test_valid_slugs_load_with_surrounding_whitespace_stripped(tmp_path: Path, raw: str, slug: str) -> None:
    config = parse_config(one_source(slug=raw), path=tmp_path / "config.yaml")
    assert config.codecollections[0].slug == slug


def test_duplicate_slug_across_sources_names_both_key_paths(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """\
        sources:
          - name: one
            type: oci
            codecollections: [{slug: x}, {slug: y}, {slug: z}, {slug: a}]
          - name: two
            type: oci
            codecollections: [{slug: " a"}]
        """,
    )
    assert problems == [
        "sources[1].codecollections[0].slug: duplicate slug 'a' "
        "(first defined at sources[0].codecollections[3].slug)"
    ]


def test_duplicate_source_names_are_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "sources: [{name: s, type: oci}, {name: s, type: static}]\n")
    assert problems == ["sources[1].name: duplicate source name 's' (first defined at sources[0].name)"]


def test_upstream_source_loads_with_its_options_and_the_collection_url_wins(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        sources:
          - name: other-catalog
            type: upstream
            options: {upstream_url: "https://catalog.example.com/", timeout: 2.5}
            codecollections:
              - slug: a
              - {slug: b, upstream_url: "http://site-b.example.com:8080/"}
          - name: local
            type: oci
            options:
        """,
    )

    upstream, local = config.sources
    assert (upstream.type, upstream.upstream_url, upstream.timeout_seconds) == (
        "upstream",
        "https://catalog.example.com",
        2.5,
    )
    a, b = upstream.codecollections
    assert upstream.upstream_for(a) == "https://catalog.example.com"
    assert upstream.upstream_for(b) == "http://site-b.example.com:8080"
    assert (local.upstream_url, local.plain_http, local.timeout_seconds) == (None, False, 15.0)
    assert config.warnings == ()


def test_upstream_collection_without_any_upstream_url_loads_with_a_warning(tmp_path: Path) -> None:
    config = load(tmp_path, "sources: [{name: up, type: upstream, codecollections: [{slug: a}]}]\n")
    assert config.warnings == (
        "sources[0].codecollections[0].upstream_url: not set here nor in sources[0].options.upstream_url; "
        "this collection gets no image refs",
    )


def test_options_a_source_type_does_not_use_load_with_a_warning(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        sources:
          - name: registry
            type: oci
            options: {timeout: 30, plain_http: true}
            codecollections: [{slug: a, image_registry: registry.example.com/a, upstream_url: "https://c"}]
          - name: files
            type: static
            options: {upstream_url: "https://c", plain_http: true}
        """,
    )
    assert config.sources[0].plain_http is True
    assert config.warnings == (
        "sources[0].options.timeout: ignored — only upstream sources use it",
        "sources[0].codecollections[0].upstream_url: ignored — only upstream sources use it",
        "sources[1].options.upstream_url: ignored — only upstream sources use it",
        "sources[1].options.plain_http: ignored — only oci sources use it",
    )


def test_git_codecollections_naming_no_configured_slug_loads_with_a_warning(tmp_path: Path) -> None:
    text = ONE_SOURCE + "git:\n  codecollections: [a, b, ' a', Bad!]\n"
    config = load(tmp_path, text)
    assert config.warnings == (
        "git.codecollections[1]: 'b' is not a slug of any configured CodeCollection; "
        "nothing is mirrored for it",
        "git.codecollections[3]: 'Bad!' is not a slug of any configured CodeCollection; "
        "nothing is mirrored for it",
    )
    assert config.git.codecollections == ("a", "b", "Bad!")


def test_git_codecollections_entries_that_are_not_strings_are_refused(tmp_path: Path) -> None:
    assert problems_of(tmp_path, ONE_SOURCE + "git:\n  codecollections: [{slug: a}, '']\n") == [
        "git.codecollections[0]: expected a slug, got a mapping",
        "git.codecollections[1]: expected a slug, got ''",
    ]


def test_git_codecollections_suggests_a_configured_slug_for_a_typo(tmp_path: Path) -> None:
    text = BAKE_CONFIG.replace("codecollections: []", "codecollections: [rw-cli-codecolection]")
    assert load(tmp_path, text).warnings[-1] == (
        "git.codecollections[0]: 'rw-cli-codecolection' is not a slug of any configured CodeCollection; "
        "nothing is mirrored for it; did you mean rw-cli-codecollection?"
    )


def test_git_codecollections_allow_list_is_kept_in_order_without_duplicates(tmp_path: Path) -> None:
    text = (
        "sources: [{name: s, type: oci, codecollections: [{slug: a}, {slug: b}]}]\n"
        "git: {codecollections: [b, a, b]}\n"
    )
    assert load(tmp_path, text).git.codecollections == ("b", "a")


# --- auth ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["git.auth", "sources[0].auth"])
@pytest.mark.parametrize(
    "auth",
    [
        {"token_env": "T", "user_env": "U", "pass_env": "P"},
        {"token_env": "T", "dockerconfigjson_env": "D"},
        {"user_env": "U", "pass_env": "P", "dockerconfigjson_env": "D"},
    ],
)
def test_auth_with_more_than_one_form_is_refused(tmp_path: Path, where: str, auth: dict[str, str]) -> None:
    data: dict[str, Any] = {"git": {}, "sources": [{"name": "s", "type": "oci"}]}
    block = data["git"] if where == "git.auth" else data["sources"][0]
    block["auth"] = auth
    with pytest.raises(ConfigError) as info:
        parse_config(data, path=tmp_path / "config.yaml")
    assert info.value.problems == [
        f"{where}: set only one of token_env, user_env+pass_env, dockerconfigjson_env"
    ]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ("{user_env: U}", "git.auth: user_env is set without pass_env; set both"),
        ("{pass_env: P}", "git.auth: pass_env is set without user_env; set both"),
    ],
)
def test_user_env_and_pass_env_must_come_together(tmp_path: Path, auth: str, expected: str) -> None:
    assert problems_of(tmp_path, f"git: {{auth: {auth}}}\n") == [expected]


@pytest.mark.parametrize(
    "secret", ["ghp_" + "A1b2" * 9, "github_pat_" + "x" * 30, "hunter2!", "p@ss word", "123456"]
)
def test_auth_values_must_be_variable_names_and_are_never_echoed(tmp_path: Path, secret: str) -> None:
    value: object = int(secret) if secret.isdigit() else secret
    data = {"git": {"auth": {"pass_env": value, "user_env": "U"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, path=tmp_path / "config.yaml")

    assert info.value.problems == [
        "git.auth.pass_env: expected the NAME of an environment variable holding the secret, not the secret"
    ]
    assert secret not in str(info.value)


def test_null_auth_block_is_anonymous(tmp_path: Path) -> None:
    config = load(tmp_path, "git:\n  auth:\nsources: [{name: s, type: oci, auth: }]\n")
    assert config.git.auth.is_anonymous
    assert config.sources[0].auth.is_anonymous


# --- URLs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cr3tTOKEN@github.com/org/repo", "https://***@github.com/org/repo"),
        ("https://s3cr3tTOKEN@github.com/org/repo", "https://***@github.com/org/repo"),
        ("http://x-access-token:s3cr3tTOKEN@git.local/repo", "http://***@git.local/repo"),
        ("ssh://git:s3cr3tTOKEN@github.com/org/repo", "ssh://***@github.com/org/repo"),
    ],
)
def test_credentials_in_git_url_are_refused_and_never_echoed(tmp_path: Path, url: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(one_source(git_url=url), path=tmp_path / "config.yaml")

    assert info.value.problems == [
        f"sources[0].codecollections[0].git_url: '{shown}' embeds credentials; "
        "credentials belong in environment variables named by git.auth"
    ]
    assert "s3cr3tTOKEN" not in str(info.value)


def test_malformed_git_url_with_a_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(one_source(git_url="user:s3cr3tTOKEN@host:org/repo"), path=tmp_path / "c.yaml")
    [problem] = info.value.problems
    assert problem.startswith("sources[0].codecollections[0].git_url: '***@host:org/repo' is not a git URL")
    assert "s3cr3tTOKEN" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/runwhen-contrib/rw-cli-codecollection",
        "http://git.internal:8080/repo.git",
        "ssh://git@github.com/org/repo.git",
        "git://git.kernel.org/pub/scm/git/git.git",
        "file:///srv/upstream/repo.git",
        "git@github.com:org/repo.git",
        "/srv/upstream/repo.git",
    ],
)
def test_supported_git_url_forms_load(tmp_path: Path, url: str) -> None:
    config = parse_config(one_source(git_url=url), path=tmp_path / "config.yaml")
    assert config.codecollections[0].git_url == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://host/repo", "'ftp://host/repo' has an unsupported scheme"),
        ("github.com/org/repo", "'github.com/org/repo' is not a git URL"),
        ("relative/repo", "'relative/repo' is not a git URL"),
        ("https:///no-host", "'https:///no-host' has no host"),
        ("http://[::1/x", "'http://[::1/x' is not a valid URL"),
    ],
)
def test_unsupported_git_urls_are_refused(tmp_path: Path, url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(one_source(git_url=url), path=tmp_path / "config.yaml")
    [problem] = info.value.problems
    assert problem.startswith(f"sources[0].codecollections[0].git_url: {expected}")


def test_public_base_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path, "git: {public_base_url: 'https://admin:s3cr3t@catalog.example.com/git'}\n"
    )
    assert problems == [
        "git.public_base_url: 'https://***@catalog.example.com/git' embeds credentials; "
        "clients would see them; remove them"
    ]


@pytest.mark.parametrize(
    ("raw", "mount"), [("/git/", "/git"), ("/mirrors/git", "/mirrors/git"), ("/g", "/g")]
)
def test_mount_path_is_normalised_without_trailing_slash(tmp_path: Path, raw: str, mount: str) -> None:
    assert load(tmp_path, f"git: {{mount_path: {raw}}}\n").git.mount_path == mount


# --- files --------------------------------------------------------------------------------------------


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.source == str(path)
    assert info.value.problems == ["file not found (set --config or CCCATALOG_CONFIG)"]


def test_a_directory_is_reported_as_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    [problem] = info.value.problems
    assert problem.startswith("cannot read file: ")


def test_invalid_yaml_names_line_and_column_but_not_the_line_itself(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "git:\n  enabled: true\n  password: hunter2: oops\n")
    assert problems == ["line 3, column 20: invalid YAML: mapping values are not allowed here"]


def test_undecodable_bytes_are_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"git:\n  enabled: \xff\xfe\xfa\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [problem] = info.value.problems
    assert problem.startswith("not readable as text (")


@pytest.mark.parametrize(
    ("text", "found"), [("- a\n- b\n", "a list"), ("just text\n", "'just text'"), ("42\n", "42")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, found: str) -> None:
    assert problems_of(tmp_path, text) == [f"top level: expected a mapping of config keys, got {found}"]


@pytest.mark.parametrize("text", ["", "# nothing configured yet\n", "---\n"])
def test_empty_file_means_all_defaults_and_no_sources(tmp_path: Path, text: str) -> None:
    config = load(tmp_path, text)

    assert config.sources == ()
    assert config.git == GitConfig()
    assert (config.git.enabled, config.git.data_dir, config.git.mount_path) == (
        False,
        Path("/opt/cc-catalog/git"),  # the predecessor's default, where baked mirrors live
        "/git",
    )
    assert config.scheduler == SchedulerConfig(catalog_poll_minutes=5, git_sync_minutes=60)
    assert config.images.runtime_sync is True
    assert config.state.path == Path("/opt/cc-catalog/git/.cccatalog/state.sqlite3")
    assert config.warnings == ()


def test_serve_queues_beyond_its_slots_and_keeps_a_pack_cache_beside_the_state_by_default(
    tmp_path: Path,
) -> None:
    serve = load(tmp_path, "").serve
    assert (serve.max_concurrent_upload_packs, serve.max_queued_upload_packs) == (8, 128)
    assert serve.max_queue_wait_seconds == 60
    assert serve.pack_cache_mb == 256
    assert serve.pack_cache_dir is None  # serve puts it in `pack-cache` beside the state file

    tuned = load(
        tmp_path,
        "serve: {max_queued_upload_packs: 0, max_queue_wait_seconds: 5, pack_cache_mb: 0,"
        " pack_cache_dir: cache}\n",
    ).serve
    assert (tuned.max_queued_upload_packs, tuned.max_queue_wait_seconds, tuned.pack_cache_mb) == (0, 5, 0)
    assert tuned.pack_cache_dir == tmp_path / "cache"


def test_bare_blocks_mean_defaults_and_empty_lists(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        scheduler:
        git:
        state:
        sources:
          - name: s
            type: oci
            auth:
            options:
            codecollections:
        """,
    )
    empty = load(tmp_path, "")
    assert (config.git, config.scheduler, config.state) == (empty.git, empty.scheduler, empty.state)
    assert config.sources[0].codecollections == ()
    assert config.sources[0].auth.is_anonymous


def test_relative_paths_resolve_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        """\
        git: {data_dir: mirrors}
        state: {path: ../var/state.sqlite3}
        sources:
          - name: offline
            type: static
            codecollections: [{slug: a, static_path: refs/a.json}, {slug: b, static_path: /abs/b.json}]
        """,
        name="etc/config.yaml",
    )
    monkeypatch.chdir(tmp_path)

    config = load_config(Path("etc/config.yaml"), environ={})

    assert config.path == tmp_path / "etc/config.yaml"
    assert config.git.data_dir == tmp_path / "etc/mirrors"
    assert config.state.path == tmp_path / "etc/../var/state.sqlite3"
    assert [cc.static_path for cc in config.codecollections] == [
        tmp_path / "etc/refs/a.json",
        Path("/abs/b.json"),
    ]


def test_default_state_file_lives_under_a_relative_data_dir(tmp_path: Path) -> None:
    config = load(tmp_path, "git: {data_dir: ./git}\n")
    assert config.state.path == tmp_path / "git/.cccatalog/state.sqlite3"
    assert config.state.path.is_absolute()


# --- environment --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("explicit", "environ", "expected"),
    [
        (
            Path("cli.yaml"),
            {"CCCATALOG_CONFIG": "new.yaml", "CC_CATALOG_CONFIG_FILE": "old.yaml"},
            "cli.yaml",
        ),
        (None, {"CCCATALOG_CONFIG": "new.yaml", "CC_CATALOG_CONFIG_FILE": "old.yaml"}, "new.yaml"),
        (None, {"CCCATALOG_CONFIG": "", "CC_CATALOG_CONFIG_FILE": "old.yaml"}, "old.yaml"),
        (None, {"CC_CATALOG_CONFIG_FILE": "old.yaml"}, "old.yaml"),
        (None, {}, "config.yaml"),
    ],
)
def test_config_path_comes_from_flag_then_new_then_old_env_var(
    explicit: Path | None, environ: dict[str, str], expected: str
) -> None:
    assert config_path_from_env(explicit, environ) == Path(expected)


def test_load_config_reads_the_file_named_by_the_predecessors_env_var(tmp_path: Path) -> None:
    path = write(tmp_path, ONE_SOURCE)
    config = load_config(environ={"CC_CATALOG_CONFIG_FILE": str(path)})
    assert config.path == path
    assert config.codecollections[0].slug == "a"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "etc/from-yaml.db"),
        ({"CCCATALOG_STATE_FILE": "/srv/state.db"}, "/srv/state.db"),
        ({"CCCATALOG_STATE_FILE": "rel/state.db"}, "cwd/rel/state.db"),
        ({"CC_CATALOG_DB_URL": "sqlite:////srv/old.db"}, "/srv/old.db"),
        ({"CC_CATALOG_DB_URL": "sqlite:///./data/old.db"}, "cwd/data/old.db"),
        ({"CC_CATALOG_DB_URL": "sqlite:///old.db?timeout=5"}, "cwd/old.db"),
        (
            {"CCCATALOG_STATE_FILE": "/srv/new.db", "CC_CATALOG_DB_URL": "sqlite:////srv/old.db"},
            "/srv/new.db",
        ),
        ({"CCCATALOG_STATE_FILE": "", "CC_CATALOG_DB_URL": "sqlite:////srv/old.db"}, "/srv/old.db"),
        (
            {"CCCATALOG_STATE_URL": "sqlite:////srv/url.db", "CCCATALOG_STATE_FILE": "/srv/new.db"},
            "/srv/url.db",
        ),
    ],
)
def test_state_path_env_overrides_take_precedence_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, "state: {path: from-yaml.db}\n", name="etc/config.yaml")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")

    config = load_config(path, environ=environ)

    assert config.state.path == tmp_path / expected
    assert config.state.path.is_absolute()


def test_unusable_db_url_is_ignored_with_a_warning_that_hides_its_value(tmp_path: Path) -> None:
    config = load(tmp_path, "", environ={"CC_CATALOG_DB_URL": "mysql://catalog:Sup3rS3cret@db.internal/c"})

    [warning] = config.warnings
    assert warning.startswith("CC_CATALOG_DB_URL: ignored — ")
    assert "Sup3rS3cret" not in warning
    assert "mysql" not in warning
    assert config.state.url is None
    assert config.state.path == Path("/opt/cc-catalog/git/.cccatalog/state.sqlite3")


@pytest.mark.parametrize(
    ("environ", "yaml", "url", "setting"),
    [
        # the predecessor's HA deployments: its variable, in SQLAlchemy's spellings
        (
            {"CC_CATALOG_DB_URL": "postgresql://cc:pw@db:5432/cc"},
            "",
            "postgresql://cc:pw@db:5432/cc",
            "CC_CATALOG_DB_URL",
        ),
        (
            {"CC_CATALOG_DB_URL": "postgresql+psycopg2://cc:pw@db/cc"},
            "",
            "postgresql://cc:pw@db/cc",
            "CC_CATALOG_DB_URL",
        ),
        (
            {"CC_CATALOG_DB_URL": "postgres://cc@db/cc?sslmode=require"},
            "",
            "postgresql://cc@db/cc?sslmode=require",
            "CC_CATALOG_DB_URL",
        ),
        # cccatalog's own: the variable wins over the file and over the predecessor's variable
        (
            {"CCCATALOG_STATE_URL": "postgresql://a:pw@one/a", "CC_CATALOG_DB_URL": "postgresql://b@two/b"},
            "state: {url: 'postgresql://c@three/c'}\n",
            "postgresql://a:pw@one/a",
            "CCCATALOG_STATE_URL",
        ),
        (
            {},
            "state: {url: 'postgresql://cccatalog@db.internal:5432/catalog'}\n",
            "postgresql://cccatalog@db.internal:5432/catalog",
            "state.url",
        ),
    ],
)
def test_a_postgresql_url_selects_the_shared_database(
    tmp_path: Path, environ: dict[str, str], yaml: str, url: str, setting: str
) -> None:
    config = load(tmp_path, yaml, environ=environ)

    assert (config.state.url, config.state.setting, config.state.backend) == (url, setting, "postgresql")
    assert config.warnings == ()
    # this host's own files (lock files, registry cache) stay under the data directory
    assert config.state.local_dir == Path("/opt/cc-catalog/git/.cccatalog")
    assert ":pw@" not in repr(config)
    assert ":pw@" not in config.state.display


def test_the_database_password_is_masked_wherever_the_url_carries_it() -> None:
    state = StateConfig(
        Path("/x"), "CCCATALOG_STATE_URL", "postgresql://cc:Sup3r%40S3cret@db/cc?password=Q1w2e3r4"
    )

    assert state.display == "postgresql://cc:***@db/cc?password=***"
    assert state.secrets({"PGPASSWORD": "from-env-9"}) == ["Sup3r@S3cret", "from-env-9"]
    assert StateConfig(Path("/x")).secrets({"PGPASSWORD": "from-env-9"}) == []


@pytest.mark.parametrize(
    ("environ", "yaml", "expected"),
    [
        (
            {},
            "state: {url: 'postgresql://cc:Sup3rS3cret@db/cc'}\n",
            "state.url: embeds a password; secrets do not belong in the config file",
        ),
        (
            {},
            "state: {url: 'postgresql://cc@db/cc', path: x.db}\n",
            "state: set state.url (a database) or state.path (a file), not both",
        ),
        ({}, "state: {url: 'mysql://cc@db/cc'}\n", "state.url: expected a postgresql://"),
        (
            {"CCCATALOG_STATE_URL": "mysql://cc:Sup3rS3cret@db/cc"},
            "",
            "CCCATALOG_STATE_URL: expected a postgresql://",
        ),
    ],
)
def test_a_bad_state_url_is_a_config_problem_that_hides_its_value(
    tmp_path: Path, environ: dict[str, str], yaml: str, expected: str
) -> None:
    path = write(tmp_path, yaml)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=environ)
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems
    assert "Sup3rS3cret" not in str(err.value)


def test_serve_replica_id_names_the_replica(tmp_path: Path) -> None:
    assert load(tmp_path, "serve: {replica_id: catalog-0}\n").serve.replica_id == "catalog-0"
    assert load(tmp_path, "").serve.replica_id is None


# --- robustness ---------------------------------------------------------------------------------------

FULL: dict[str, Any] = {
    "scheduler": {"catalog_poll_minutes": 5, "git_sync_minutes": 60},
    "git": {
        "enabled": True,
        "data_dir": "/d",
        "mount_path": "/git",
        "public_base_url": "https://h/git",
        "runtime_sync": False,
        "auth": {"token_env": "T"},
        "codecollections": ["a"],
        "clone_timeout_seconds": 900,
        "fetch_timeout_seconds": 600,
        "refs": "all",
        "parallelism": 2,
        "lock_timeout_seconds": 10,
    },
    "state": {"path": "s.db"},
    "images": {"runtime_sync": False},
    "serve": {
        "max_concurrent_upload_packs": 8,
        "max_queued_upload_packs": 128,
        "max_queue_wait_seconds": 60,
        "pack_cache_mb": 256,
        "pack_cache_dir": "pack-cache",
    },
    "sources": [
        {
            "name": "up",
            "type": "upstream",
            "auth": {"token_env": "UPSTREAM_TOKEN"},
            "options": {"upstream_url": "https://catalog.example.com", "timeout": 15},
            "codecollections": [{"slug": "b", "upstream_url": "https://other.example.com"}],
        },
        {
            "name": "s",
            "type": "static",
            "auth": {"user_env": "U", "pass_env": "P"},
            "options": {"plain_http": True, "upstream_url": "https://u"},
            "codecollections": [
                {
                    "slug": "a",
                    "name": "A",
                    "git_url": "https://h/a",
                    "image_registry": "ghcr.io/o/a",
                    "default_ref": "main",
                    "visibility": "public",
                    "static_path": "a.json",
                }
            ],
        },
    ],
}


def _key_paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    paths: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += _key_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            paths += _key_paths(value, (*prefix, i))
    return paths


ODD_VALUES: list[object] = [
    None,
    True,
    0,
    -1,
    2.5,
    "",
    " ",
    "x",
    "../..",
    [],
    [None],
    [[]],
    {},
    {"k": 1},
    {1: 2},
    datetime.date(2024, 1, 1),
    b"bytes",
    {"x", "y"},
]


def test_full_config_used_by_the_robustness_test_is_valid(tmp_path: Path) -> None:
    config = parse_config(FULL, path=tmp_path / "config.yaml")
    assert config.git.codecollections == ("a",)


@pytest.mark.parametrize("key_path", _key_paths(FULL), ids=lambda p: ".".join(map(str, p)))
def test_any_value_anywhere_raises_only_config_error(tmp_path: Path, key_path: tuple[str | int, ...]) -> None:
    for value in ODD_VALUES:
        data = copy.deepcopy(FULL)
        node: Any = data
        for step in key_path[:-1]:
            node = node[step]
        node[key_path[-1]] = value
        try:
            parse_config(data, path=tmp_path / "config.yaml", environ={})
        except ConfigError as exc:
            problems = exc.problems
        else:
            problems = []
        assert all(p and "\n" not in p for p in problems), problems


# --- immutability -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr_path", "value"),
    [
        ("path", Path("/x")),
        ("git.enabled", False),
        ("git.auth.token_env", "OTHER"),
        ("scheduler.git_sync_minutes", 1),
        ("state.path", Path("/x")),
        ("sources.0.name", "x"),
        ("sources.0.codecollections.0.slug", "x"),
    ],
)
def test_loaded_config_is_frozen(tmp_path: Path, attr_path: str, value: object) -> None:
    obj: Any = load(tmp_path, BAKE_CONFIG)
    *parents, attr = attr_path.split(".")
    for step in parents:
        obj = obj[int(step)] if step.isdigit() else getattr(obj, step)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attr, value)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("git:\n  enabled: true\nsources: []\ngit:\n  enabled: false\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "line 4, column 1: invalid YAML: duplicate key 'git' (it would silently override the first)"
    ]
