"""The README is product surface: it opens with the two commands and documents every command and key."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from cccatalog import envvars
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


def _docs_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_tool", ROOT / "tools" / "docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_reference_matches_the_code() -> None:
    """docs/commands.md and docs/configuration.md hold the commands' --help and every config key as
    the code defines them: `python tools/docs.py` regenerates them when this fails."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_every_config_key_and_variable_the_code_reads_is_in_the_reference() -> None:
    tool = _docs_tool()
    reference = (ROOT / "docs" / "configuration.md").read_text()
    keys = [key for key, _default, _meaning in tool.config_rows()]
    assert len(keys) > 40
    for key in keys:
        assert f"| `{key}` |" in reference, key
    for names in envvars.DOCS:
        for name in names:
            assert f"`{name}`" in reference, name
    known = {name for names in envvars.DOCS for name in names}
    declared = {
        name
        for value in vars(envvars).values()
        if isinstance(value, tuple) and all(isinstance(n, str) for n in value)
        for name in value
    }
    assert declared <= known, f"undocumented variables: {sorted(declared - known)}"


def test_every_doc_link_points_at_a_file_that_exists() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_readme_is_what_a_newcomer_reads() -> None:
    assert len(README.encode()) < 8 * 1024, "reference material belongs in docs/"


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
