"""Logs a pipeline can parse: under `--log-format json` (or CCCATALOG_LOG_FORMAT=json) every line on stderr
is one JSON object with time, level, logger and message plus the record's fields, tracebacks included
at -vv, and a credential never appears in any field."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cccatalog.logs import JsonFormatter, RedactingFilter
from cccatalog.redact import Redactor
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream, git, http_upstream
from tests.servefixtures import serve_process

MakeUpstream = Callable[[str], Upstream]
CANARY = "canary-Secret-7f3a9b2c41"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def cccatalog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cccatalog", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line parsed; a line that is not one JSON object fails the test."""
    lines = []
    for line in stderr.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert TIME.fullmatch(entry["time"]), entry
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), entry
        assert entry["logger"].startswith("cccatalog"), entry
        assert isinstance(entry["message"], str), entry
        lines.append(entry)
    return lines


def assert_no_canary(text: str) -> None:
    for form in (CANARY, base64.b64encode(CANARY.encode()).decode().rstrip("=")):
        assert form not in text
    assert base64.b64encode(f"x-access-token:{CANARY}".encode()).decode()[:-4] not in text


def test_a_failing_sync_at_vv_logs_only_json_and_never_the_token(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    up = make_upstream("alpha")
    served = tmp_path / "served"
    served.mkdir()
    git("clone", "-q", "--bare", str(up.path), str(served / "alpha.git"))
    with http_upstream(served, required_authorization="Basic bm90LXRoaXMtb25l") as upstream:
        path = write_config(
            {"alpha": upstream.repo_url("alpha.git")},
            git_extra="  auth:\n    token_env: GITHUB_TOKEN\n",
        )
        result = cccatalog(
            "--log-format", "json", "-vv", "sync", "-c", str(path), env={"GITHUB_TOKEN": CANARY}
        )
    sent = base64.b64encode(f"x-access-token:{CANARY}".encode()).decode()
    assert f"Basic {sent}" in upstream.seen_authorization, (
        "the token never reached the upstream: nothing to leak"
    )

    assert result.returncode == 1, result.stderr
    entries = json_lines(result.stderr)
    assert [e for e in entries if e["level"] == "DEBUG" and "git" in e["message"]], "-vv logs git commands"
    assert [e for e in entries if e["level"] == "ERROR"]
    assert_no_canary(result.stderr)
    assert_no_canary(result.stdout)


def test_an_error_at_vv_is_one_json_line_with_its_traceback_in_exc(tmp_path: Path) -> None:
    result = cccatalog(
        "-vv", "status", "-c", str(tmp_path / "missing.yaml"), env={"CCCATALOG_LOG_FORMAT": "json"}
    )

    assert result.returncode == 2
    (entry,) = json_lines(result.stderr)
    assert entry["level"] == "ERROR"
    assert "file not found" in entry["message"]
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert "ConfigError" in entry["exc"]


def test_a_usage_error_is_json_too_and_the_option_works_after_the_command(tmp_path: Path) -> None:
    result = cccatalog("status", "--no-such-option", "--log-format", "json")

    assert result.returncode == 2
    (entry,) = json_lines(result.stderr)
    assert "No such option: --no-such-option" in entry["message"]
    assert entry["details"][0].startswith("Usage: cccatalog status")


def test_a_bad_log_format_is_a_usage_error_naming_the_variable() -> None:
    result = cccatalog("status", env={"CCCATALOG_LOG_FORMAT": "xml"})

    assert result.returncode == 2
    assert "CCCATALOG_LOG_FORMAT" in result.stderr
    assert "'xml' is not one of 'text', 'json'" in result.stderr


def test_serves_access_log_is_json_with_its_fields(
    make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    from tests.servefixtures import synced_config

    path = write_config({"alpha": make_upstream("alpha").url})
    synced_config(path)
    env = {
        "CCCATALOG_LOG_FORMAT": "json",
        "CC_CATALOG_DISABLE_SCHEDULER": "1",
        "CCCATALOG_ADMIN_TOKEN": CANARY,
    }
    with serve_process(path, env=env) as (proc, url):
        clone = subprocess.run(
            ["git", "clone", "-q", f"{url}/git/alpha.git", str(tmp_path / "clone")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        httpx.get(f"{url}/api/v1/catalog/codecollections", params={"access_token": CANARY})
        httpx.post(f"{url}/api/v1/admin/sync-git", headers={"Authorization": f"Bearer {CANARY}x"})
        httpx.get(f"{url}/git/alpha.git/info/refs/Bearer%20{CANARY}")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)

    assert clone.returncode == 0, clone.stderr
    entries = json_lines(stderr)
    access = [e for e in entries if e["logger"] == "cccatalog.access"]
    upload = next(e for e in access if e["route"] == "git-upload-pack")
    assert upload["client"] == "127.0.0.1"
    assert upload["method"] == "POST"
    assert upload["path"] == "/git/alpha.git/git-upload-pack"
    assert upload["status"] == 200
    assert upload["bytes"] > 0
    assert isinstance(upload["duration_ms"], float)
    assert {e["route"] for e in access} >= {"git-info-refs", "git-upload-pack", "api-catalog", "api-admin"}
    assert_no_canary(stderr)


def test_redaction_runs_on_every_field_and_on_the_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(Redactor([CANARY])))
    logger = logging.getLogger("cccatalog.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError(f"token {CANARY} in an exception")
        except RuntimeError:
            logger.error(
                "message with %s",
                CANARY,
                exc_info=True,
                extra={"field": f"x {CANARY} y", "nested": {"list": [CANARY]}, "count": 3},
            )
    finally:
        logger.removeHandler(handler)

    (entry,) = json_lines(stream.getvalue())
    assert entry["message"] == "message with ***"
    assert entry["field"] == "x *** y"
    assert entry["nested"] == {"list": ["***"]}
    assert entry["count"] == 3
    assert "RuntimeError: token *** in an exception" in entry["exc"]
    assert_no_canary(stream.getvalue())


@pytest.mark.parametrize("where", ["before", "after"])
def test_text_stays_the_default_format(where: str, tmp_path: Path) -> None:
    args = ["-v", "status", "-c", str(tmp_path / "missing.yaml")]
    if where == "after":
        args = ["status", "-c", str(tmp_path / "missing.yaml"), "-v"]
    result = cccatalog(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
