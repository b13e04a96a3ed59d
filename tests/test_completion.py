"""Shell completion: `cccatalog --install-completion` installs it, `--show-completion` prints it, and the
installed script's protocol completes commands and their options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cccatalog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cccatalog", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def complete(words: str) -> list[str]:
    """What bash would offer for the last word of `words`, through the installed script's protocol."""
    env = {
        "_CCCATALOG_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    if words.endswith(" "):
        env["COMP_CWORD"] = str(len(words.split()))
    result = cccatalog(env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_commands_and_their_options_complete() -> None:
    assert complete("cccatalog st") == ["status"]
    assert set(complete("cccatalog s")) == {"sync", "serve", "status"}
    assert {"--config", "--max-age", "--json"} <= set(complete("cccatalog status --"))


def test_install_completion_writes_the_script_and_sources_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    result = cccatalog("--install-completion", env={"HOME": str(home), "SHELL": "/bin/bash"})

    assert result.returncode == 0, result.stderr
    script = home / ".bash_completions" / "cccatalog.sh"
    assert "_CCCATALOG_COMPLETE=complete_bash" in script.read_text()
    assert str(script) in (home / ".bashrc").read_text()


def test_show_completion_prints_the_script_for_a_shell() -> None:
    result = cccatalog("--show-completion", env={"SHELL": "/bin/bash"})
    assert result.returncode == 0, result.stderr
    assert "complete -o default -F _cccatalog_completion cccatalog" in result.stdout
