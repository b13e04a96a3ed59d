"""The README is product surface: it opens with the two commands and documents every command and key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cccatalog.cli import app
from cccatalog.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


README_COMMANDS = re.findall(r"```sh\n(.*?)```", README, flags=re.S)[:2]


def test_readme_opens_with_install_and_test_commands_in_a_new_virtualenv() -> None:
    first, second = (block.strip() for block in README_COMMANDS)
    assert first.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install . && ")
    assert first.endswith("cccatalog demo")
    assert second.startswith("python3 -m venv .venv && . .venv/bin/activate && tools/install-test-deps && ")
    assert second.endswith("pip install -e '.[test]' && python -m pytest")


def test_ci_runs_exactly_the_readme_commands() -> None:
    """CI reads the commands out of the README rather than keeping a copy that could drift."""
    printed = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_commands.py")], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert printed == [block.strip() for block in README_COMMANDS]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.py" in ci
    assert "${readme[0]} --once" in ci
    assert '${readme[1]}"' in ci


def test_every_command_is_in_the_readme() -> None:
    names = [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]
    assert names
    for name in names:
        assert f"`cccatalog {name.replace('_', '-')}`" in README


@pytest.mark.parametrize(
    "key",
    [
        "git.enabled", "git.data_dir", "git.mount_path", "git.public_base_url", "git.runtime_sync",
        "git.auth", "state.url",
        "git.codecollections", "git.clone_timeout_seconds", "git.fetch_timeout_seconds", "git.refs",
        "git.parallelism", "git.lock_timeout_seconds", "state.path", "scheduler.git_sync_minutes",
        "scheduler.catalog_poll_minutes", "sources[].name", "sources[].type", "sources[].auth",
        "sources[].options", "sources[].codecollections[].slug", "sources[].codecollections[].git_url",
        "sources[].codecollections[].image_registry", "sources[].codecollections[].default_ref",
        "sources[].codecollections[].visibility", "sources[].codecollections[].static_path",
        "serve.host", "serve.port", "serve.max_concurrent_upload_packs", "serve.max_request_body_mb",
        "serve.idle_timeout_seconds", "serve.request_timeout_seconds", "serve.shutdown_grace_seconds",
        "serve.advertisement_cache_mb", "images.runtime_sync", "sources[].codecollections[].upstream_url",
        "transfer.allowed_signers", "transfer.signer",
    ],
)  # fmt: skip
def test_every_config_key_is_documented(key: str) -> None:
    assert f"`{key}`" in README


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("config*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(example: Path) -> None:
    config = load_config(example, environ={})
    assert config.codecollections
    assert config.warnings == ()


def test_the_migration_guide_is_linked_and_names_each_difference_the_predecessors_users_meet() -> None:
    guide = (ROOT / "docs" / "migrating.md").read_text()
    assert "(docs/migrating.md)" in README
    for topic in (
        "refs/pull/*",
        "wait=true",
        "`Z`",
        '{"detail"',
        "Unknown keys are refused",
        "CC_CATALOG_DB_URL",
        "CC_CATALOG_DISABLE_SCHEDULER",
        "CC_CATALOG_LOG_LEVEL",
        "images.runtime_sync",
        "`/opt/cc-catalog/git`",
        "target_image_ref",
        "repos_changed",
        "is_prerelease",
        "stable_ref",
    ):
        assert topic in guide, topic
    for bug in range(1, 13):
        assert f"bug {bug})" in guide or f"bug {bug}:" in guide or f"bug {bug} " in guide, bug


def test_the_replicas_guide_is_linked_and_says_what_is_shared_and_what_is_not() -> None:
    guide = (ROOT / "docs" / "ha.md").read_text()
    assert "(docs/ha.md)" in README
    for topic in (
        "CCCATALOG_STATE_URL",
        "CC_CATALOG_DB_URL",
        "PGPASSWORD",
        "cccatalog[postgres]",
        "ReadWriteMany",
        "serve.replica_id",
        "advisory lock",
        '"status": "degraded"',
        "Retry-After",
        "examples/kubernetes/ha/",
        "volume-id",
        "max_connections",
    ):
        assert topic in guide, topic
