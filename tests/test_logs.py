"""The log level from the predecessor's environment: CC_CATALOG_LOG_LEVEL (and CCCATALOG_LOG_LEVEL)
set what a command narrates unless -v or -q say otherwise, and bound what `serve` prints."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cccatalog.cli import run
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream
from tests.servefixtures import serve_process

MakeUpstream = Callable[[str], Upstream]


def sync_stderr(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> str:
    capsys.readouterr()
    assert run([*flags, "sync", "-c", str(path)]) == 0
    return capsys.readouterr().err


@pytest.fixture
def config(make_upstream: MakeUpstream, write_config: MakeConfig) -> Path:
    return write_config({"alpha": make_upstream("alpha").url})


@pytest.mark.parametrize("variable", ["CC_CATALOG_LOG_LEVEL", "CCCATALOG_LOG_LEVEL"])
def test_the_environment_sets_the_level_of_a_command(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    assert "alpha: cloned" not in sync_stderr(capsys, config)  # warnings only by default
    monkeypatch.setenv(variable, "info")
    assert "alpha: unchanged" in sync_stderr(capsys, config)
    assert "alpha: unchanged" not in sync_stderr(capsys, config, "-q")  # the flag wins


def test_ours_wins_over_the_predecessors_variable(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC_CATALOG_LOG_LEVEL", "INFO")
    monkeypatch.setenv("CCCATALOG_LOG_LEVEL", "ERROR")
    assert "alpha: cloned" not in sync_stderr(capsys, config)


def test_a_value_that_is_no_level_is_reported_and_the_default_kept(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC_CATALOG_LOG_LEVEL", "loud")
    err = sync_stderr(capsys, config)
    assert "CC_CATALOG_LOG_LEVEL='loud' is not a log level" in err
    assert "alpha: cloned" not in err


def test_a_warning_level_silences_serves_access_log(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCCATALOG_ADMIN_TOKEN", raising=False)
    logs = {}
    for level in ("INFO", "WARNING"):
        env = {"CC_CATALOG_LOG_LEVEL": level, "CC_CATALOG_DISABLE_SCHEDULER": "1"}
        with serve_process(config, env=env) as (proc, url):
            assert httpx.get(f"{url}/api/v1/catalog/codecollections").status_code == 200
            proc.send_signal(signal.SIGTERM)
            logs[level] = proc.communicate(timeout=15)[1]
    assert '"GET /api/v1/catalog/codecollections" 200' in logs["INFO"]
    assert '"GET /api/v1/catalog/codecollections"' not in logs["WARNING"]
