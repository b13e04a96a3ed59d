"""The embedded demo: a few local upstream CodeCollections and a config pointing at them.

`cccatalog demo` builds this, then runs the real sync on it, so a new user sees the product work with
nothing but git installed and no network at all.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cccatalog.errors import GitError, LockBusy, UsageError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.locks import file_lock
from cccatalog.paths import writable_dir_problem
from cccatalog.redact import Redactor

if TYPE_CHECKING:
    from cccatalog.jobs import SyncReport
    from cccatalog.server.app import CatalogServer

# A demo directory carries this file: a directory without it that holds anything is the user's own
# and is never written to (it might hold a config.yaml of theirs).
MARKER = ".cccatalog-demo"
_LOCK = ".cccatalog-demo.lock"


@dataclass(frozen=True, slots=True)
class DemoCollection:
    slug: str
    name: str
    tasks: tuple[str, ...]


DEMO_COLLECTIONS = (
    DemoCollection("demo-cli-codecollection", "Demo CLI CodeCollection", ("k8s-pod-health", "dns-latency")),
    DemoCollection(
        "demo-cloud-codecollection", "Demo Cloud CodeCollection", ("aws-cost-report", "azure-vm-audit")
    ),
    DemoCollection("demo-workspace-utils", "Demo Workspace Utilities", ("slack-notify",)),
)

_AUTHOR = {
    "user.name": "cccatalog demo",
    "user.email": "demo@cccatalog.invalid",
    "init.defaultBranch": "main",
    "commit.gpgSign": "false",
    "tag.gpgSign": "false",
}


@contextmanager
def demo_directory(root: Path) -> Iterator[Path]:
    """Claim `root` for a demo, for as long as the context lasts.

    Refused (UsageError, nothing written) when `root` is not a directory this user can write, when it
    holds files not made by a demo, or when another demo is running in it: a second demo would re-point
    the first one's config at its own port.
    """
    if problem := writable_dir_problem(root):
        raise UsageError(f"--dir {problem}")
    if root.is_dir() and not (root / MARKER).exists() and any(root.iterdir()):
        raise UsageError(
            f"--dir {root}: the directory is not empty and was not made by `cccatalog demo`; "
            "nothing was written. Choose a new or empty directory."
        )
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            stack.enter_context(file_lock(root / _LOCK, timeout=0, what=f"the demo in {root}"))
        except LockBusy:
            raise UsageError(
                f"--dir {root}: another `cccatalog demo` is running in this directory; stop it first "
                "or choose another --dir"
            ) from None
        if not (root / MARKER).exists():
            (root / MARKER).touch()
        yield root


@dataclass(frozen=True, slots=True)
class CloneCheck:
    url: str
    head: str
    files: int


def clone_once(git: Git, url: str) -> CloneCheck:
    """Clone `url` with the git CLI, as the printed line would, into a temporary directory (removed)."""
    with tempfile.TemporaryDirectory(prefix="cccatalog-demo-clone-") as tmp:
        dest = Path(tmp) / "clone"
        git.run(["clone", "--quiet", url, str(dest)], timeout=120)
        head = git.run(["-C", str(dest), "rev-parse", "HEAD"], timeout=30).stdout.strip()
        files = git.run(["-C", str(dest), "ls-files"], timeout=30).stdout.splitlines()
    return CloneCheck(url, head, len(files))


def run_demo(
    root: Path,
    *,
    port: int,
    serve: bool,
    once: bool,
    redactor: Redactor,
    environ: Mapping[str, str],
    show_report: Callable[[SyncReport], None],
    say: Callable[[str], None],
) -> bool:
    """Build the demo in `root` (claimed with `demo_directory`), sync it with the real sync, and serve it
    with the real server on 127.0.0.1 (`port`, or a free one when it is taken) until SIGTERM/SIGINT.
    `once`: clone through the server with git, say how it went, and stop. False when something failed."""
    from cccatalog.config import load_config
    from cccatalog.jobs import SyncRequest, perform_sync
    from cccatalog.server.app import serve_forever
    from cccatalog.server.service import build_service
    from cccatalog.server.sockets import listen_socket

    git = Git(redactor=redactor, environ=environ)
    sock = None
    if serve:
        try:
            sock = listen_socket("127.0.0.1", port)
        except UsageError:
            sock = listen_socket("127.0.0.1", 0)
    try:
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/git" if sock else None
        config = load_config(build_demo(root, git, public_base_url=base_url), environ={})
        report = perform_sync(
            config, SyncRequest(), allow_runtime_sync=False, redactor=redactor, environ=environ
        )
        show_report(report)
        if report.failed or not report.git:
            return False
        slug = report.git[0].slug
        say(f"\nConfig: {config.path}\nMirrors: {config.git.data_dir}")
        if sock is None:
            say(f"Try:\n  git clone {Layout(config.git.data_dir).repo(slug).as_uri()}")
            return True
        service = build_service(config, environ=environ, redactor=redactor)
        server = service.serve_on(("127.0.0.1", 0), sock=sock)
        sock = None  # the server owns it now
        clone_url = f"{server.url}{config.git.mount_path}/{slug}.git"
        catalog_url = f"{server.url}/api/v1/catalog/codecollections?only_with_image=false"
        try:
            if once:
                return _serve_and_clone_once(server, git, clone_url, say)
            say(f"Serving on {server.url} (Ctrl-C stops). Try:\n  git clone {clone_url}")
            say(f"Catalog: {catalog_url}")
            serve_forever(server)
            return True
        finally:
            service.close()
    finally:
        if sock is not None:
            sock.close()


def _serve_and_clone_once(
    server: CatalogServer, git: Git, clone_url: str, say: Callable[[str], None]
) -> bool:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        say(f"Serving on {server.url}. Cloning once:\n  git clone {clone_url}")
        checked = clone_once(git, clone_url)
        say(f"Cloned {checked.files} files at {checked.head[:12]} through {server.url}: the demo works.")
        return True
    except GitError as exc:
        say(f"The clone through {server.url} failed: {exc}")
        return False
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def build_demo(root: Path, git: Git, *, public_base_url: str | None = None) -> Path:
    """Create upstream repos under `root/upstreams` (once), a static image-refs file per collection
    (what a registry would list for its builds), and `root/config.yaml`. Returns the config's path."""
    upstreams = root / "upstreams"
    for cc in DEMO_COLLECTIONS:
        repo = upstreams / cc.slug
        if not (repo / ".git").is_dir():
            _make_upstream(repo, cc, git)
        _write_refs(root / "refs" / f"{cc.slug}.json", repo, git)
    config = root / "config.yaml"
    config.write_text(_config_text(upstreams, public_base_url), encoding="utf-8")
    return config


def _write_refs(path: Path, repo: Path, git: Git) -> None:
    """Two builds of main (the newer one wins by build time, not by tag) and one per release tag."""

    def sha(rev: str) -> str:
        return git.run(["-C", str(repo), "rev-parse", "--short=7", rev], timeout=30).stdout.strip()

    runtime = "6e4bc81"
    tags = git.run(["-C", str(repo), "tag", "--list", "--sort=v:refname", "v*"], timeout=30).stdout.split()
    refs = [
        {"ref": "main", "image_tag": f"main-{sha('main~1')}-{runtime}", "built_at": "2026-01-05T10:00:00Z"},
        {"ref": "main", "image_tag": f"main-{sha('main')}-{runtime}", "built_at": "2026-01-06T10:00:00Z"},
    ] + [
        {"ref": tag, "image_tag": f"{tag}-{sha(tag)}-{runtime}", "built_at": f"2026-01-0{i + 1}T09:00:00Z"}
        for i, tag in enumerate(tags)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    # A static file names its stable ref, as the predecessor's format does: the newest release tag.
    document = {"default_ref": "main", "stable_ref": tags[-1] if tags else "main", "refs": refs}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _make_upstream(repo: Path, cc: DemoCollection, git: Git) -> None:
    repo.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        git.run(["-C", str(repo), *args], config=_AUTHOR, timeout=60)

    run("init", "--quiet")
    (repo / "README.md").write_text(f"# {cc.name}\n\nA demo CodeCollection served by cccatalog.\n")
    run("add", "README.md")
    run("commit", "--quiet", "-m", "Start the collection")
    for i, task in enumerate(cc.tasks):
        task_dir = repo / "codebundles" / task
        task_dir.mkdir(parents=True, exist_ok=True)
        (task_dir / "runbook.robot").write_text(f"*** Tasks ***\n{task}\n    Log    checking {task}\n")
        run("add", "codebundles")
        run("commit", "--quiet", "-m", f"Add {task}")
        run("tag", "-a", f"v1.{i}.0", "-m", f"Release v1.{i}.0")
    run("switch", "--quiet", "-c", "feature/next")
    (repo / "NEXT.md").write_text("Work in progress.\n")
    run("add", "NEXT.md")
    run("commit", "--quiet", "-m", "Start the next release")
    run("switch", "--quiet", "main")


def _config_text(upstreams: Path, public_base_url: str | None) -> str:
    entries = "".join(
        f"      - slug: {cc.slug}\n"
        f"        name: {cc.name}\n"
        f"        git_url: {(upstreams / cc.slug).resolve().as_uri()}\n"
        f"        image_registry: localhost:5000/demo/{cc.slug}\n"
        f"        static_path: refs/{cc.slug}.json\n"
        for cc in DEMO_COLLECTIONS
    )
    base = f"  public_base_url: {public_base_url}\n" if public_base_url else ""
    return (
        "# Written by `cccatalog demo`: local upstreams, mirrored under ./mirrors.\n"
        "git:\n"
        "  enabled: true\n"
        "  data_dir: mirrors\n" + base + "state:\n"
        "  path: state.sqlite3\n"
        "sources:\n"
        "  - name: demo\n"
        "    type: static\n"
        "    codecollections:\n" + entries
    )
