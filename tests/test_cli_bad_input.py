"""Everything a new user can get wrong, through the real CLI in a subprocess.

Each case asserts what the user sees: the documented exit code, one `error:` line first naming the
key, option, variable or path, no traceback; and, where the exit code is 2 (or the case says so), a
working directory exactly as it was (nothing created, nothing rewritten).

Unwritable directories are tried as an unprivileged user (`setpriv`, when the tests run as root) and
read-only filesystems inside a private mount namespace (`unshare -m`); cases that need what the
machine cannot give are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.unprivileged import ReadableInstall

Setup = Callable[[Path], dict[str, str]]
Snapshot = dict[str, tuple[str, int, int]]

GOOD_SOURCE = (
    "sources:\n  - name: s\n    type: static\n    codecollections:\n"
    "      - slug: a\n        git_url: /nowhere\n"
)


def _write(name: str, text: str | bytes) -> Setup:
    def setup(root: Path) -> dict[str, str]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return {}

    return setup


def _config(text: str) -> Setup:
    return _write("config.yaml", text)


def _both(*setups: Setup) -> Setup:
    def setup(root: Path) -> dict[str, str]:
        env: dict[str, str] = {}
        for one in setups:
            env.update(one(root))
        return env

    return setup


def _env(**values: str) -> Setup:
    return lambda _root: dict(values)


def _state_file(kind: str) -> Setup:
    """config.yaml whose state file is `state.db`, made corrupt, foreign or newer."""

    def setup(root: Path) -> dict[str, str]:
        _config(f"git:\n  enabled: true\n  data_dir: mirrors\nstate:\n  path: state.db\n{GOOD_SOURCE}")(root)
        db = root / "state.db"
        if kind == "corrupt":
            db.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
        elif kind == "text":
            db.write_text("this is not a database\n" * 10)
        elif kind == "directory":
            db.mkdir()
        else:
            conn = sqlite3.connect(db)
            if kind == "foreign":
                conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
            elif kind == "newer":
                conn.execute("CREATE TABLE t (x)")
                conn.execute("PRAGMA user_version = 999")
            conn.commit()
            conn.close()
        return {}

    return setup


def _deep_yaml(root: Path) -> dict[str, str]:
    (root / "config.yaml").write_text("git: " + "[" * 10000 + "]" * 10000 + "\n")
    return {}


def _busy_port(root: Path) -> dict[str, str]:
    """A port some other program listens on; its number goes to CCCATALOG_PORT."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    _HELD.append(sock)
    _config(f"git:\n  enabled: true\n  data_dir: mirrors\n{GOOD_SOURCE}")(root)
    return {"CCCATALOG_PORT": str(sock.getsockname()[1]), "CCCATALOG_HOST": "127.0.0.1"}


_HELD: list[socket.socket] = []


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    exit: int
    mentions: tuple[str, ...]
    setup: Setup = field(default=lambda _root: {})
    unchanged: bool = False  # also for exit codes other than 2
    as_user: bool = False  # run as an unprivileged user in a root-owned directory
    read_only: str | None = None  # mount a read-only filesystem at this path (relative) first
    absent: tuple[str, ...] = ()  # must not appear anywhere in the output (secrets)
    without: tuple[str, ...] = ()  # modules this cccatalog lacks (an install without an extra)


GIT_OK = f"git:\n  enabled: true\n  data_dir: mirrors\n{GOOD_SOURCE}"
TOKEN = "ghp_" + "A1b2C3d4" * 5

CASES = [
    # --- the config file ---
    Case("config-missing", ("sync",), 2, ("config.yaml", "file not found")),
    Case("config-is-a-directory", ("sync", "-c", "conf"), 2, ("conf", "cannot read"), _write("conf/x", "")),
    Case("config-invalid-yaml", ("sync",), 2, ("invalid YAML", "line 2"), _config("git: [\n")),
    Case("config-nested-10000-deep", ("sync",), 2, ("nested too deeply",), _deep_yaml),
    Case("config-binary", ("sync",), 2, ("not readable as text",), _write("config.yaml", b"git: \xc3\x28\n")),
    Case("config-top-level-list", ("sync",), 2, ("top level",), _config("- git\n")),
    Case("config-unknown-key", ("sync",), 2, ("gti: unknown key", "did you mean git"), _config("gti: {}\n")),
    Case("config-duplicate-key", ("sync",), 2, ("duplicate key 'git'",), _config("git: {}\ngit: {}\n")),
    Case(
        "config-duplicate-slug",
        ("sync",),
        2,
        ("duplicate slug 'a'",),
        _config(GIT_OK + "      - slug: a\n        git_url: /elsewhere\n"),
    ),
    Case(
        "config-invalid-slug",
        ("sync",),
        2,
        ("not a valid slug",),
        _config(GIT_OK.replace("slug: a", "slug: ../etc")),
    ),
    Case(
        "config-url-with-password",
        ("sync",),
        2,
        ("git_url", "embeds credentials"),
        _config(GIT_OK.replace("/nowhere", "https://bob:s3cr3t-pw@github.com/x/y")),
        absent=("s3cr3t-pw",),
    ),
    Case(
        "config-token-pasted-as-variable-name",
        ("sync",),
        2,
        ("git.auth.token_env", "NAME of an environment"),
        _config(f"git:\n  auth:\n    token_env: {TOKEN}\n"),
        absent=(TOKEN,),
    ),
    Case(
        "config-destination-token-pasted-as-variable-name",
        ("sync",),
        2,
        ("destinations[0].auth.token_env", "NAME of an environment"),
        _config(
            f"{GIT_OK}destinations:\n  - name: acme\n    base_url: https://acme.jfrog.io\n"
            f"    repo_key: docker\n    auth: {{token_env: {TOKEN}}}\n"
        ),
        absent=(TOKEN,),
    ),
    Case(
        "config-destination-without-repo-key",
        ("sync",),
        2,
        ("destinations[0].repo_key", "is required"),
        _config(f"{GIT_OK}destinations:\n  - {{name: acme, type: jfrog, base_url: https://acme.jfrog.io}}\n"),
    ),
    Case(
        "config-uppercase-image-registry",
        ("sync",),
        2,
        ("image_registry", "lowercase", "ghcr.io/org/rw-cli"),
        _config(
            "sources:\n  - name: s\n    type: oci\n    codecollections:\n"
            "      - slug: a\n        image_registry: ghcr.io/Org/RW-CLI\n"
        ),
    ),
    Case(
        "config-image-registry-with-scheme",
        ("sync",),
        2,
        ("image_registry", "without a scheme"),
        _config(
            "sources:\n  - name: s\n    type: oci\n    codecollections:\n"
            "      - slug: a\n        image_registry: https://ghcr.io/org/x\n"
        ),
    ),
    Case("config-bad-mount-path", ("sync",), 2, ("git.mount_path",), _config("git:\n  mount_path: git\n")),
    Case("config-port-out-of-range", ("serve",), 2, ("serve.port",), _config("serve:\n  port: 70000\n")),
    Case(
        "config-wrong-type",
        ("sync",),
        2,
        ("git.enabled", "true or false"),
        _config("git:\n  enabled: 'yes'\n"),
    ),
    Case(
        "config-env-points-nowhere",
        ("sync",),
        2,
        ("/nonexistent/cc.yaml", "file not found"),
        _env(CCCATALOG_CONFIG="/nonexistent/cc.yaml"),
    ),
    Case("config-empty-has-nothing-to-sync", ("sync",), 0, ("nothing to sync",), _config(""), unchanged=True),
    Case(
        "config-git-disabled-nothing-to-sync",
        ("sync", "--no-images"),
        0,
        ("git.enabled is false",),
        _config("git:\n  enabled: false\n" + GOOD_SOURCE),
        unchanged=True,
    ),
    # --- the command line and its environment ---
    Case("unknown-command", ("synk",), 2, ("No such command 'synk'",)),
    Case("unknown-option", ("sync", "--bogus"), 2, ("--bogus",)),
    Case("only-unknown-slug", ("sync", "--only", "zzz"), 2, ("--only zzz",), _config(GIT_OK)),
    Case("jobs-zero", ("sync", "-j", "0"), 2, ("--jobs",)),
    Case("jobs-not-a-number", ("sync", "-j", "many"), 2, ("--jobs",)),
    Case("demo-port-too-high", ("demo", "--port", "70000"), 2, ("--port",)),
    Case("demo-port-negative", ("demo", "--port", "-5"), 2, ("--port",)),
    Case(
        "port-env-out-of-range",
        ("serve",),
        2,
        ("CCCATALOG_PORT",),
        _both(_config(GIT_OK), _env(CCCATALOG_PORT="99999")),
    ),
    Case(
        "port-env-not-a-number",
        ("serve",),
        2,
        ("CCCATALOG_PORT",),
        _both(_config(GIT_OK), _env(CCCATALOG_PORT="abc")),
    ),
    Case(
        "predecessor-port-env-not-a-number",
        ("serve",),
        2,
        ("CC_CATALOG_PORT",),
        _both(_config(GIT_OK), _env(CC_CATALOG_PORT="http")),
    ),
    Case("serve-port-in-use", ("serve",), 2, ("Address already in use",), _busy_port),
    Case(
        "serve-bad-host",
        ("serve", "--host", "no-such-host.invalid"),
        2,
        ("--host", "no-such-host.invalid"),
        _config(GIT_OK),
    ),
    Case(
        "serve-host-not-an-address",
        ("serve", "--host", "999.1.2.3", "--port", "0"),
        2,
        ("999.1.2.3",),
        _config(GIT_OK),
    ),
    Case("serve-schedule-zero", ("serve", "--git-sync-minutes", "0"), 2, ("--git-sync-minutes",)),
    Case(
        "resolve-bare-slug-without-config",
        ("resolve-latest", "rw-cli-codecollection"),
        2,
        ("rw-cli-codecollection", "no config file", "--config"),
        absent=("library/",),
    ),
    Case("resolve-unknown-slug", ("resolve-latest", "zzz"), 2, ("zzz", "no CodeCollection"), _config(GIT_OK)),
    Case(
        "resolve-ref-and-all-refs",
        ("resolve-latest", "ghcr.io/o/x", "--ref", "main", "--all-refs"),
        2,
        ("--ref", "--all-refs"),
    ),
    Case(
        "resolve-uppercase-reference", ("resolve-latest", "ghcr.io/Org/X"), 2, ("ghcr.io/Org/X", "lowercase")
    ),
    Case(
        "resolve-docker-hub-uppercase",
        ("resolve-latest", "docker.io/Nginx"),
        2,
        ("docker.io/Nginx",),
        absent=("library/",),
    ),
    Case("resolve-bad-tag", ("resolve-latest", "ghcr.io/o/x:bad!tag"), 2, ("not a valid tag",)),
    Case(
        "resolve-plain-http-remote", ("resolve-latest", "http://registry.example.com/o/x"), 2, ("plain HTTP",)
    ),
    Case(
        "bake-dest-is-a-file",
        ("bake", "--dest", "afile"),
        2,
        ("--dest", "afile", "not a directory"),
        _both(_config(GIT_OK), _write("afile", "x")),
    ),
    Case(
        "bake-dest-under-a-file",
        ("bake", "--dest", "afile/git"),
        2,
        ("--dest", "not a directory"),
        _both(_config(GIT_OK), _write("afile", "x")),
    ),
    Case(
        "bake-token-file-missing",
        ("bake", "--dest", "out", "--token-file", "nope"),
        2,
        ("--token-file", "nope"),
        _config(GIT_OK),
    ),
    Case(
        "bake-token-file-empty",
        ("bake", "--dest", "out", "--token-file", "tok"),
        2,
        ("--token-file", "empty"),
        _both(_config(GIT_OK), _write("tok", "\n")),
    ),
    Case(
        "bake-nothing-to-bake",
        ("bake", "--dest", "out"),
        2,
        ("nothing to bake",),
        _config("sources:\n  - name: s\n    type: static\n"),
    ),
    Case(
        "demo-dir-is-a-file",
        ("demo", "--dir", "afile"),
        2,
        ("--dir", "not a directory"),
        _write("afile", "x"),
    ),
    Case(
        "demo-dir-holds-the-users-files",
        ("demo", "--dir", "."),
        2,
        ("--dir", "not made by `cccatalog demo`"),
        _config("# my own config\n"),
    ),
    Case(
        "check-unset-variable",
        ("check",),
        1,
        ("git.auth.token_env", "MY_TOKEN"),
        _config(
            "git:\n  enabled: true\n  data_dir: mirrors\n  auth:\n    token_env: MY_TOKEN\n"
            + GOOD_SOURCE.replace("/nowhere", "https://github.com/o/x")
        ),
        unchanged=True,
    ),
    Case("check-config-missing", ("check", "-c", "nope.yaml"), 2, ("nope.yaml",)),
    # --- the filesystem ---
    Case(
        "data-dir-is-a-file",
        ("sync",),
        2,
        ("git.data_dir", "not a directory"),
        _both(_config(GIT_OK), _write("mirrors", "x")),
    ),
    Case(
        "data-dir-under-a-file",
        ("sync",),
        2,
        ("git.data_dir",),
        _both(_config(GIT_OK.replace("data_dir: mirrors", "data_dir: afile/mirrors")), _write("afile", "x")),
    ),
    Case(
        "state-path-under-a-file",
        ("sync",),
        2,
        ("state.path", "not a directory"),
        _both(_config(GIT_OK + "state:\n  path: afile/state.db\n"), _write("afile", "x")),
    ),
    Case(
        "state-env-under-a-file",
        ("sync",),
        2,
        ("CCCATALOG_STATE_FILE",),
        _both(_config(GIT_OK), _write("afile", "x"), _env(CCCATALOG_STATE_FILE="afile/s.db")),
    ),
    Case(
        "data-dir-not-writable", ("sync",), 2, ("git.data_dir", "not writable"), _config(GIT_OK), as_user=True
    ),
    Case(
        "bake-dest-not-writable",
        ("bake", "--dest", "out"),
        2,
        ("--dest", "not writable"),
        _config(GIT_OK),
        as_user=True,
    ),
    Case("demo-dir-not-writable", ("demo", "--dir", "d"), 2, ("--dir", "not writable"), as_user=True),
    Case(
        "data-dir-read-only-fs",
        ("sync",),
        2,
        ("git.data_dir", "read-only"),
        _config(GIT_OK.replace("data_dir: mirrors", "data_dir: ro/mirrors")),
        read_only="ro",
    ),
    Case("demo-dir-read-only-fs", ("demo", "--dir", "ro/demo"), 2, ("--dir", "read-only"), read_only="ro"),
    # --- the state file ---
    Case("state-corrupt", ("sync",), 1, ("state.db",), _state_file("corrupt"), unchanged=True),
    Case("state-not-a-database", ("sync",), 1, ("state.db",), _state_file("text"), unchanged=True),
    Case(
        "state-foreign-database",
        ("sync",),
        1,
        ("not a cccatalog state file", "invoices"),
        _state_file("foreign"),
        unchanged=True,
    ),
    Case("state-newer", ("sync",), 1, ("newer cccatalog",), _state_file("newer"), unchanged=True),
    Case("state-is-a-directory", ("sync",), 1, ("state.db",), _state_file("directory"), unchanged=True),
    # --- failures are said even when asked to be quiet ---
    Case(
        "quiet-sync-with-failing-images",
        ("-q", "sync", "--no-git"),
        1,
        ("a: images", "refs.json"),
        _config(
            "git:\n  data_dir: mirrors\nsources:\n  - name: s\n    type: static\n    codecollections:\n"
            "      - slug: a\n        static_path: refs.json\n"
        ),
    ),
    Case(
        "quiet-after-the-command",
        ("sync", "--no-git", "-q"),
        1,
        ("a: images",),
        _config(
            "git:\n  data_dir: mirrors\nsources:\n  - name: s\n    type: static\n    codecollections:\n"
            "      - slug: a\n        static_path: refs.json\n"
        ),
    ),
]


def _snapshot(root: Path) -> Snapshot:
    found: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            kind = "d" if path.is_dir() else "f"
            found[str(path.relative_to(root))] = (kind, st.st_size if kind == "f" else 0, st.st_mtime_ns)
    return found


def _can_run_as_nobody() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        probe = subprocess.run(
            ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$0"', tmp],
            capture_output=True,
            check=False,
        )
    return probe.returncode == 0


@pytest.fixture
def workdir() -> Iterator[Path]:
    with scratch_dir() as root:
        yield root


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's own tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="cccatalog-badinput-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for sock in _HELD:
            sock.close()
        _HELD.clear()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_line_and_the_documented_exit_code(
    case: Case, workdir: Path, request: pytest.FixtureRequest
) -> None:
    run_case(case, workdir, request)


# Run as a plain `python -m cccatalog`, except that the modules named are not importable: what a
# `pip install cccatalog` without that extra has.
_WITHOUT = (
    "import sys\n"
    "for name in sys.argv[1].split(','): sys.modules[name] = None\n"
    "sys.argv = ['cccatalog', *sys.argv[2:]]\n"
    "from cccatalog.cli import main\n"
    "main()\n"
)


def run_case(case: Case, workdir: Path, request: pytest.FixtureRequest) -> None:
    """Run `case` in `workdir` (made by the `workdir` fixture) and check what the user sees."""
    if case.as_user and not _can_run_as_nobody():
        pytest.skip("needs root and setpriv to run as an unprivileged user")
    readable: ReadableInstall | None = None
    if case.as_user:
        # nobody cannot read a private checkout or the virtualenv in it: it runs a readable copy
        found = request.getfixturevalue("readable_cccatalog")
        if isinstance(found, str):
            pytest.skip(found)
        readable = found
    if case.read_only and not _can_mount_read_only():
        pytest.skip("cannot mount a read-only filesystem here (unshare -m)")
    run_dir = workdir / "work"
    run_dir.mkdir()
    home = workdir / "home"
    home.mkdir()
    extra = case.setup(run_dir)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LC_ALL": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        **extra,
    }
    argv = [sys.executable, "-m", "cccatalog", *case.argv]
    if case.without:
        argv = [sys.executable, "-c", _WITHOUT, ",".join(case.without), *case.argv]
    if case.read_only:
        (run_dir / case.read_only).mkdir()
        argv = [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"',
            case.read_only,
            *argv,
        ]
    if readable is not None:
        for path in (workdir, run_dir, home):
            path.chmod(0o755)  # readable, not writable, by the unprivileged user
        env.update(readable.env)
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *readable.argv(*case.argv)]
    before = _snapshot(workdir)
    proc = subprocess.run(argv, cwd=run_dir, env=env, capture_output=True, text=True, timeout=60, check=False)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == case.exit, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip()]
    if case.exit:
        assert lines, "a failure must be said on stderr"
        assert lines[0].startswith("error: ") or case.id.startswith("quiet"), err
        assert sum(line.startswith("error: ") for line in lines) <= 1 or case.id.startswith("quiet"), err
    for words in case.mentions:
        assert words in err, f"{words!r} not in stderr:\n{err}"
    for secret in case.absent:
        assert secret not in err + out
    if case.exit == 2 or case.unchanged:
        assert _snapshot(workdir) == before, "the working directory changed"
