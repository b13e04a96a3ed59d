"""Bad input, command by command: what a new user tried that once wrote files before refusing, exited 1
where 2 was due, named the wrong problem first, or ended in a traceback. Each case asserts the exit
code, one `error:` line naming the option, variable or file, and (exit 2) a directory left as it was;
the runner is tests/test_cli_bad_input.py's."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.test_cli_bad_input import GIT_OK, Case, _both, _config, _env, _write, run_case, scratch_dir

DEEP = b"[" * 100_000 + b"]" * 100_000
PG_URL = "postgresql://cc:Pg-Secret-9@127.0.0.1:1/cc"
OTHER = GIT_OK.replace("slug: a\n", "slug: other\n")
STATIC = (
    "git:\n  enabled: false\n  data_dir: mirrors\nsources:\n  - name: s\n    type: static\n"
    "    codecollections:\n      - slug: a\n        static_path: refs.json\n"
)
MARKUP_TAG = {"ref": "main", "commit": "1234567", "rt_revision": "89abcde", "image_tag": "main-[/]-[bold]x"}


def _cli(root: Path, *args: str) -> None:
    """A step of the setup, by the CLI itself (it must succeed)."""
    out = subprocess.run(
        [sys.executable, "-m", "cccatalog", *args], cwd=root, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr


def _site_manifest_of_other_collections(root: Path) -> dict[str, str]:
    (root / "site").mkdir()
    (root / "site" / "config.yaml").write_text(OTHER)
    _cli(root, "manifest", "-c", "site/config.yaml", "--out", "site.json")
    return {}


def _passphrase_key(root: Path) -> dict[str, str]:
    cmd = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(root / "key")]
    subprocess.run(cmd, check=True)
    return {}


def _update_with_deep_manifest(root: Path) -> dict[str, str]:
    with tarfile.open(root / "update.tar", "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(DEEP)
        tar.addfile(info, io.BytesIO(DEEP))
    return {}


def _synced_markup_tag(root: Path) -> dict[str, str]:
    _cli(root, "sync", "--no-git")
    return {}


_SERVERS: list[ThreadingHTTPServer] = []


class _DeepTags(BaseHTTPRequestHandler):
    """A registry whose tag list is JSON nested 100,000 deep (no real registry answers so)."""

    def do_GET(self) -> None:
        body = DEEP if self.path.endswith("/tags/list") or "/tags/list?" in self.path else b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _deep_registry() -> str:
    """Start one; its repository's address (loopback: plain HTTP)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DeepTags)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _SERVERS.append(server)
    return f"127.0.0.1:{server.server_address[1]}/org/repo"


CASES = [
    # --- the state: a postgresql:// URL where the driver is not installed (pip install without the extra)
    *(
        Case(
            f"{args[0]}-postgres-url-without-psycopg",
            args,
            2,
            ("CCCATALOG_STATE_URL", "pip install 'cccatalog[postgres]'"),
            _both(_config(GIT_OK), _env(CCCATALOG_STATE_URL=PG_URL)),
            without=("psycopg",),
            absent=("Pg-Secret-9",),
        )
        for args in (("sync",), ("check",), ("status",), ("serve", "--get", "/healthz"))
    ),
    # --- import: the file is named first, before the config, a lock or the state is touched
    Case("import-missing-file", ("import", "nope.tar"), 2, ("update file nope.tar", "no such file")),
    Case("import-empty-file", ("import", "u.tar"), 2, ("update file u.tar", "empty"), _write("u.tar", "")),
    Case("import-not-a-tar", ("import", "u.tar"), 2, ("u.tar", "not a tar file"), _write("u.tar", "hello\n")),
    Case("import-a-directory", ("import", "u"), 2, ("update file u", "a directory"), _write("u/x", "")),
    Case(
        "import-deeply-nested-manifest",
        ("import", "update.tar", "--allow-unsigned"),
        2,
        ("nested too deeply",),
        _both(_config(GIT_OK), _update_with_deep_manifest),
    ),
    # --- manifest and export: where they write
    Case(
        "manifest-out-in-a-missing-directory",
        ("manifest", "--out", "no/such/site.json"),
        2,
        ("--out no/such/site.json", "the directory no/such does not exist"),
        _config(GIT_OK),
    ),
    Case(
        "export-out-in-a-missing-directory",
        ("export", "--out", "no/such/u.tar"),
        2,
        ("--out no/such/u.tar", "does not exist"),
        _config(GIT_OK),
    ),
    Case(
        "export-out-is-a-directory",
        ("export", "--out", "d"),
        2,
        ("--out d", "is a directory"),
        _write("d/x", ""),
    ),
    # --- export: the signing key and the site manifest, checked before any lock or file
    Case(
        "export-sign-key-not-a-key",
        ("export", "--out", "u.tar", "--sign-key", "key"),
        2,
        ("--sign-key key", "not an SSH private key"),
        _both(_config(GIT_OK), _write("key", "hello\n")),
    ),
    Case(
        "export-sign-key-with-a-passphrase",
        ("export", "--out", "u.tar", "--sign-key", "key"),
        2,
        ("--sign-key key", "passphrase", "ssh-agent"),
        _both(_config(GIT_OK), _passphrase_key),
    ),
    Case(
        "export-since-a-site-of-other-collections",
        ("export", "--out", "u.tar", "--since", "site.json"),
        2,
        ("--since site.json", "only on the site: other", "only in config.yaml: a"),
        _both(_config(GIT_OK), _site_manifest_of_other_collections),
    ),
    Case(
        "export-since-deeply-nested",
        ("export", "--out", "u.tar", "--since", "site.json"),
        2,
        ("site.json", "nested too deeply"),
        _both(_config(GIT_OK), _write("site.json", DEEP)),
    ),
    # --- serve: a boolean variable that is neither true nor false
    Case(
        "serve-disable-scheduler-maybe",
        ("serve", "--get", "/healthz"),
        2,
        ("CCCATALOG_DISABLE_SCHEDULER", "'maybe'"),
        _both(_config(GIT_OK), _env(CCCATALOG_DISABLE_SCHEDULER="maybe")),
    ),
    Case(
        "serve-old-disable-scheduler-typo",
        ("serve", "--get", "/healthz"),
        2,
        ("CC_CATALOG_DISABLE_SCHEDULER", "'ture'"),
        _both(_config(GIT_OK), _env(CC_CATALOG_DISABLE_SCHEDULER="ture")),
    ),
    # --- check: an allowed-signers file that is not one fails the check
    Case(
        "check-allowed-signers-not-one",
        ("check",),
        1,
        ("transfer.allowed_signers", "line 1"),
        _both(
            _config(GIT_OK + "transfer:\n  allowed_signers: signers\n"), _write("signers", "hello world\n")
        ),
        unchanged=True,
    ),
    Case(
        "check-allowed-signers-bad-key",
        ("check",),
        1,
        ("transfer.allowed_signers", "line 2"),
        _both(
            _config(GIT_OK + "transfer:\n  allowed_signers: signers\n"),
            _write("signers", "# release keys\nrelease@example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n"),
        ),
        unchanged=True,
    ),
    # --- resolve-latest: what it is asked, checked before any request
    Case(
        "resolve-latest-bad-digest",
        ("resolve-latest", "ghcr.io/org/repo@sha256:zz"),
        2,
        ("ghcr.io/org/repo@sha256:zz", "'sha256:zz' is not a digest"),
    ),
    Case(
        "resolve-latest-empty-ref", ("resolve-latest", "ghcr.io/org/repo", "--ref", ""), 2, ("--ref", "empty")
    ),
    Case(
        "resolve-latest-deeply-nested-tag-list",
        ("resolve-latest", "@registry"),
        1,
        ("nested too deeply",),
        unchanged=True,
    ),
    # --- an option missing its value: that option is named, not the one after it
    Case(
        "sync-config-missing-its-value",
        ("sync", "-c", "--json"),
        2,
        ("Option '-c' requires a value", "--json"),
    ),
    Case(
        "export-out-missing-its-value",
        ("export", "--out", "--json"),
        2,
        ("Option '--out' requires a value", "'--json'"),
    ),
    # --- data that looks like Rich markup is printed as it is; a static file too deep is that
    # collection's failure (a log line, as for any failing collection: the "quiet" runs)
    Case(
        "sync-image-tag-with-markup",
        ("sync", "--no-git"),
        0,
        (),
        _both(_config(STATIC), _write("refs.json", json.dumps({"refs": [MARKUP_TAG]}))),
    ),
    Case(
        "status-image-tag-with-markup",
        ("status",),
        0,
        (),
        _both(_config(STATIC), _write("refs.json", json.dumps({"refs": [MARKUP_TAG]})), _synced_markup_tag),
    ),
    Case(
        "quiet-sync-static-file-deeply-nested",
        ("-q", "sync", "--no-git"),
        1,
        ("refs.json", "nested too deeply"),
        _both(_config(STATIC), _write("refs.json", DEEP)),
    ),
    # --- probe: the URL
    Case("probe-not-http", ("probe", "ftp://example.org/"), 2, ("URL", "expected http://")),
    Case(
        "probe-with-credentials",
        ("probe", "http://u:p@127.0.0.1/"),
        2,
        ("URL", "no credentials"),
        absent=("u:p",),
    ),
]


@pytest.fixture
def workdir() -> Iterator[Path]:
    with scratch_dir() as root:
        yield root
    for server in _SERVERS:
        server.shutdown()
        server.server_close()
    _SERVERS.clear()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_of_a_command_is_one_line_and_changes_nothing(
    case: Case, workdir: Path, request: pytest.FixtureRequest
) -> None:
    if case.argv[-1:] == ("@registry",):  # the registry's address is known only once it runs
        case = replace(case, argv=(*case.argv[:-1], _deep_registry()))
    run_case(case, workdir, request)
