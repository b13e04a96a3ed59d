"""The command line as a user meets it: exit codes, what is printed where, help text."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cccatalog import __version__
from cccatalog.cli import run
from tests.conftest import MakeConfig
from tests.gitfixtures import Upstream, git
from tests.transferfixtures import make_keys

MakeUpstream = Callable[[str], Upstream]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--version")
    assert code == 0
    # the test extra installs the postgres extra; the single binary says `build: single binary`
    assert out.splitlines() == [f"cccatalog {__version__}", "build: python package", "postgres: yes"]


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cccatalog", "--version"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"cccatalog {__version__}"


@pytest.mark.parametrize("argv", [[], ["-v"], ["--log-format", "json"]], ids=["bare", "-v", "log-format"])
def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2
    assert out.startswith("Usage: cccatalog [OPTIONS] COMMAND [ARGS]...")
    assert "resolve-latest" in out
    assert err == ""


HEAVY_MODULES = (
    "httpx",
    "sqlite3",
    "cccatalog.server.app",
    "cccatalog.gitmirror.git",
    "cccatalog.oci.client",
)


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["resolve-latest", "--help"], ["sync", "--help"]]
)
def test_help_and_version_load_no_command_modules(argv: list[str]) -> None:
    """Start-up is most of a short command's time: each command imports its modules when it runs."""
    probe = (
        "import sys\n"
        "from cccatalog.cli import run\n"
        f"code = run({argv!r})\n"
        f"print('loaded:', [m for m in {HEAVY_MODULES!r} if m in sys.modules], code)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "loaded: [] 0"


@pytest.mark.parametrize("command", ["sync", "bake", "resolve-latest", "serve", "demo"])
def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0
    assert "Example: cccatalog" in out


def test_sync_json_summary_on_stdout_and_exit_0(
    capsys: pytest.CaptureFixture[str], make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url, "beta": make_upstream("beta").url})
    code, out, _ = cli(capsys, "sync", "--config", str(path), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["ok"] is True
    assert summary["counts"] == {"cloned": 2}
    assert [r["slug"] for r in summary["repos"]] == ["alpha", "beta"]
    assert all(len(r["head_commit"]) == 40 for r in summary["repos"])


def test_sync_table_and_exit_1_when_a_repo_failed(
    capsys: pytest.CaptureFixture[str], make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url, "broken": (tmp_path / "missing").as_uri()})
    code, out, err = cli(capsys, "sync", "-c", str(path))
    assert code == 1
    assert "alpha" in out
    assert "cloned" in out
    assert "broken" in out
    assert "failed" in out
    assert "broken" in err  # the failure is narrated on stderr too


def test_sync_only_limits_the_run_and_refuses_unknown_slugs(
    capsys: pytest.CaptureFixture[str], make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url, "beta": make_upstream("beta").url})
    code, out, _ = cli(capsys, "sync", "-c", str(path), "--only", "beta", "--json")
    assert code == 0
    assert [r["slug"] for r in json.loads(out)["repos"]] == ["beta"]
    code, _, err = cli(capsys, "sync", "-c", str(path), "--only", "nope")
    assert code == 2
    assert "--only nope: no CodeCollection with that slug" in err


def test_runtime_sync_false_refuses_unless_allowed(
    capsys: pytest.CaptureFixture[str], make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url}, git_extra="  runtime_sync: false\n")
    code, _, err = cli(capsys, "sync", "-c", str(path))
    assert code == 2
    assert "git.runtime_sync is false" in err
    assert "--allow-runtime-sync" in err
    assert not (path.parent / "mirrors" / "alpha.git").exists()
    code, _, _ = cli(capsys, "sync", "-c", str(path), "--allow-runtime-sync")
    assert code == 0
    assert (path.parent / "mirrors" / "alpha.git").is_dir()


def test_git_disabled_syncs_nothing_and_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("git:\n  enabled: false\n  data_dir: mirrors\n")
    code, _, err = cli(capsys, "sync", "-c", str(path))
    assert code == 0
    assert "git.enabled is false" in err


def test_config_errors_exit_2_listing_every_problem_without_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "git:\n  enabled: 'yes'\n  parallelism: 0\n  bogus: 1\n"
        "sources:\n  - name: s\n    type: oci\n    codecollections:\n      - slug: a.git\n"
    )
    code, out, err = cli(capsys, "sync", "-c", str(path))
    assert code == 2
    assert out == ""
    for key in ("git.enabled", "git.parallelism", "git.bogus", "sources[0].codecollections[0].slug"):
        assert key in err
    assert "Traceback" not in err


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "sync", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "nope.yaml" in err


def test_config_path_from_environment(
    capsys: pytest.CaptureFixture[str],
    make_upstream: MakeUpstream,
    write_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url})
    monkeypatch.setenv("CC_CATALOG_CONFIG_FILE", str(path))
    code, out, _ = cli(capsys, "sync", "--json")
    assert code == 0
    assert json.loads(out)["counts"] == {"cloned": 1}


def test_secrets_never_reach_output_or_logs(
    capsys: pytest.CaptureFixture[str],
    write_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    token = "ghp_" + "Zz9" * 12
    monkeypatch.setenv("LEAKY_TOKEN", token)
    path = write_config(
        {"alpha": "http://127.0.0.1:9/nothing-listens-here"},
        git_extra="  auth:\n    token_env: LEAKY_TOKEN\n",
    )
    code, out, err = cli(capsys, "-vv", "sync", "-c", str(path), "--json")
    assert code == 1
    import base64

    encoded = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    for text in (
        out,
        err,
        path.with_name("mirrors").joinpath(".cccatalog", "state.sqlite3").read_bytes().decode("latin-1"),
    ):
        assert token not in text
        assert encoded not in text


def test_demo_creates_syncs_and_prints_a_working_clone_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = cli(capsys, "demo", "--no-serve", "--dir", str(tmp_path / "demo"))
    assert code == 0, out
    clone_line = next(line.strip() for line in out.splitlines() if line.strip().startswith("git clone "))
    url = clone_line.split()[-1]
    git("clone", "-q", url, str(tmp_path / "checkout"))
    assert (tmp_path / "checkout" / "README.md").exists()
    assert "v1.0.0" in git("tag", cwd=tmp_path / "checkout")
    # running it again re-uses the demo and reports nothing new
    code, out, _ = cli(capsys, "demo", "--no-serve", "--dir", str(tmp_path / "demo"))
    assert code == 0
    assert "unchanged" in out


@pytest.mark.slow
def test_demo_serves_the_mirrors_and_the_printed_clone_line_works(tmp_path: Path) -> None:
    """The README's first command: sync the demo, serve it, print a clone line that works as pasted."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "cccatalog", "demo", "--dir", str(tmp_path / "demo"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        clone_line = ""
        for line in proc.stdout:
            if line.strip().startswith("git clone http://127.0.0.1:"):
                clone_line = line.strip()
                break
        assert clone_line, proc.stderr.read() if proc.stderr else ""
        subprocess.run(
            [*clone_line.split(), str(tmp_path / "checkout")], check=True, capture_output=True, timeout=60
        )
        assert (tmp_path / "checkout" / "codebundles").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize("argv", [["sync", "--bogus"], ["nosuch"], ["sync", "--jobs", "0"]])
def test_usage_errors_exit_2_with_a_message_and_no_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: "), err
    assert "Traceback" not in err


def _start_demo(directory: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cccatalog", "demo", "--dir", str(directory), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip().startswith("git clone http://127.0.0.1:"):
            return proc, line.split()[-1]
    proc.kill()
    raise AssertionError(proc.stderr.read() if proc.stderr else "the demo printed no clone line")


@pytest.mark.slow
def test_demo_once_clones_through_the_server_then_exits_0(tmp_path: Path) -> None:
    """The README's first command in the form CI runs: it serves, clones once with git, and stops."""
    out = subprocess.run(
        [sys.executable, "-m", "cccatalog", "demo", "--once", "--dir", str(tmp_path / "demo"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    clone_line = next(
        line.strip() for line in out.stdout.splitlines() if line.strip().startswith("git clone ")
    )
    assert clone_line.startswith("git clone http://127.0.0.1:")
    assert "the demo works" in out.stdout
    # the server is gone with the command: the URL no longer answers
    gone = subprocess.run(["git", "ls-remote", clone_line.split()[-1]], capture_output=True, check=False)
    assert gone.returncode != 0


@pytest.mark.slow
def test_a_second_demo_in_the_same_directory_is_refused_and_the_first_keeps_serving(tmp_path: Path) -> None:
    import signal

    directory = tmp_path / "demo"
    first, url = _start_demo(directory)
    try:
        config_before = (directory / "config.yaml").read_bytes()
        second = subprocess.run(
            [sys.executable, "-m", "cccatalog", "demo", "--dir", str(directory), "--port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith("error: --dir")
        assert "another `cccatalog demo` is running" in second.stderr
        assert (directory / "config.yaml").read_bytes() == config_before
        git("ls-remote", url)  # the first demo still answers at its own port
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=15) == 0


def _static_config(tmp_path: Path, *, slug: str = "cc", tag_ref: str = "main") -> Path:
    """A config with one static collection whose newest build has a long tag."""
    (tmp_path / "refs.json").write_text(
        json.dumps(
            {
                "refs": [
                    {
                        "ref": tag_ref,
                        "image_tag": f"{tag_ref}-1234567-89abcde",
                        "built_at": "2026-01-02T03:04:05Z",
                    }
                ]
            }
        )
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        "git:\n  data_dir: mirrors\nsources:\n  - name: s\n    type: static\n    codecollections:\n"
        f"      - slug: {slug}\n        static_path: refs.json\n        default_ref: {tag_ref}\n"
    )
    return path


def test_tables_never_fold_an_identifier_when_stdout_is_not_a_terminal(tmp_path: Path) -> None:
    slug = "a-codecollection-with-a-name-long-enough-to-fill-most-of-a-terminal-line"
    ref = "feature-a-branch-name-that-is-itself-quite-long"
    config = _static_config(tmp_path, slug=slug, tag_ref=ref)
    out = subprocess.run(
        [sys.executable, "-m", "cccatalog", "sync", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if slug in line)
    assert f"{ref}-1234567-89abcde" in row  # slug and tag whole, on one line


def test_global_flags_work_after_the_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = _static_config(tmp_path)
    code, out, err = cli(capsys, "sync", "-c", str(config), "-q")
    assert (code, out, err) == (0, "", "")
    code, out, err = cli(capsys, "sync", "-c", str(config), "--json", "-v")
    assert code == 0
    assert json.loads(out)["ok"] is True
    assert "cc: images: 1 refs, latest main-1234567-89abcde" in err


def test_a_global_flag_where_an_option_value_belongs_is_named_not_hoisted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = _static_config(tmp_path)
    code, _, err = cli(capsys, "sync", "-c", str(config), "--only", "-q")
    assert code == 2
    assert err.startswith("error: Option '--only' requires a value, but it is followed by the option '-q'.")


def test_help_shows_defaults_environment_variables_and_examples_unfolded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "serve", "--help")
    assert code == 0
    for text in ("[serve.port]", "[serve.host]", "CCCATALOG_PORT", "CC_CATALOG_PORT", "CCCATALOG_CONFIG"):
        assert text in out
    assert "Example: cccatalog serve --config config.yaml --host 0.0.0.0 --port 8080" in out
    code, out, _ = cli(capsys, "resolve-latest", "--help")
    assert "Example: cccatalog resolve-latest ghcr.io/runwhen-contrib/rw-cli-codecollection --ref main" in out
    assert "IMAGE|SLUG" in out
    assert "{target}" not in out
    code, out, _ = cli(capsys, "--help")
    assert "-v, --verbose" in out
    assert "INTEGER" not in out.upper().replace("INTEGRITY", "")


def test_serve_get_answers_without_creating_anything(tmp_path: Path) -> None:
    config = _static_config(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for path, status in (("/healthz", "200"), ("/api/v1/catalog/codecollections", "200")):
        out = subprocess.run(
            [sys.executable, "-m", "cccatalog", "serve", "-c", str(config), "--get", path],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == status
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_serve_get_reads_the_state_a_sync_wrote(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import hashlib

    config = _static_config(tmp_path)
    assert cli(capsys, "sync", "-c", str(config))[0] == 0
    state = tmp_path / "mirrors" / ".cccatalog" / "state.sqlite3"
    digest = hashlib.sha256(state.read_bytes()).hexdigest()
    code, out, _ = cli(capsys, "serve", "-c", str(config), "--get", "/api/v1/catalog/codecollections")
    assert code == 0
    body = json.loads(out.split("\n", 1)[1])
    assert body[0]["latest_image_tag"] == "main-1234567-89abcde"
    assert hashlib.sha256(state.read_bytes()).hexdigest() == digest


def test_very_verbose_logs_every_git_command_without_secrets(
    capsys: pytest.CaptureFixture[str], make_upstream: MakeUpstream, write_config: MakeConfig
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url})
    code, _, err = cli(capsys, "-vv", "sync", "-c", str(path), "--no-images")
    assert code == 0
    assert "ls-remote --symref origin" in err
    assert "repack -a -d" in err


def test_check_reports_a_ready_config_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], make_upstream: MakeUpstream, write_config: MakeConfig, tmp_path: Path
) -> None:
    path = write_config({"alpha": make_upstream("alpha").url})
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    code, out, err = cli(capsys, "check", "-c", str(path), "--json", "--network")
    assert code == 0, err
    report = json.loads(out)
    checks = {c["subject"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert checks["git.data_dir"]["status"] == "ok"
    assert "will be created" in checks["git.data_dir"]["detail"]
    assert "will be created" in checks["state.path"]["detail"]
    assert checks["mirror alpha"]["status"] == "warn"
    assert checks["upstream alpha"]["status"] == "ok"
    # without public_base_url the API would send clients upstream: said, not failed
    assert checks["git.public_base_url"]["status"] == "warn"
    assert "upstream" in checks["git.public_base_url"]["detail"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    # after a sync the same check finds the mirror and the state file
    assert cli(capsys, "sync", "-c", str(path))[0] == 0
    code, out, _ = cli(capsys, "check", "-c", str(path), "--json")
    checks = {c["subject"]: c for c in json.loads(out)["checks"]}
    assert checks["mirror alpha"]["status"] == "ok"
    assert "schema version" in checks["state.path"]["detail"]


def test_check_network_names_an_upstream_that_does_not_answer(
    capsys: pytest.CaptureFixture[str], write_config: MakeConfig, tmp_path: Path
) -> None:
    path = write_config({"gone": (tmp_path / "no-such-repo").as_uri()})
    code, out, err = cli(capsys, "check", "-c", str(path), "--network")
    assert code == 1
    assert err.startswith("error: 1 check failed")
    assert "upstream gone:" in err
    assert "fail" in out


def test_check_reads_the_allowed_signers_file_it_will_verify_updates_with(
    capsys: pytest.CaptureFixture[str], write_config: MakeConfig, tmp_path: Path
) -> None:
    path = write_config({}, git_extra="")
    path.write_text(path.read_text() + "transfer:\n  allowed_signers: signers\n")
    code, _, err = cli(capsys, "check", "-c", str(path))
    assert code == 1
    assert "transfer.allowed_signers:" in err
    (tmp_path / "signers").write_text("# nobody yet\n")
    code, _, err = cli(capsys, "check", "-c", str(path))
    assert code == 1
    assert "no signer in it" in err
    # a truncated key is not a key: every update would be refused, so check says so now
    (tmp_path / "signers").write_text("release@example.invalid ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n")
    code, _, err = cli(capsys, "check", "-c", str(path))
    assert code == 1
    assert "line 1 is not 'principals [options] key-type base64-key' with a valid SSH key" in err
    keys = make_keys(tmp_path / "keys")
    (tmp_path / "signers").write_text(keys.allowed_signers.read_text())
    code, out, _ = cli(capsys, "check", "-c", str(path), "--json")
    assert code == 0
    checks = {c["subject"]: c for c in json.loads(out)["checks"]}
    assert checks["transfer.allowed_signers"]["detail"].endswith("1 signers")
