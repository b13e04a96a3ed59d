"""The command line: parse options, load config, call one core function, render. The only place that exits.

Every CCCatalogError is turned into one red line and its exit code here (0 ok, 1 something failed,
2 usage or config); a traceback is shown only with -vv.

Each command imports what it needs when it runs: `resolve-latest` and `--help` do not pay for the
server, git and SQLite modules (nor `sync` for the registry client's), which is most of start-up.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cccatalog import __version__
from cccatalog.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CCCatalogError, UsageError
from cccatalog.logs import LOGGER_NAME, setup_logging
from cccatalog.redact import Redactor

if TYPE_CHECKING:
    from cccatalog.config import Config
    from cccatalog.gitmirror.sync import MirrorSyncer, RepoResult, RepoTask
    from cccatalog.jobs import SyncReport
    from cccatalog.oci.auth import RegistryAuth
    from cccatalog.oci.reference import Repository
    from cccatalog.oci.resolve import Build, RefResolution
    from cccatalog.server.app import CatalogServer
    from cccatalog.server.service import Service

log = logging.getLogger(LOGGER_NAME)

app = typer.Typer(
    name="cccatalog",
    help="Air-gap git mirrors and image catalog for CodeCollections.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # errors are rendered by run(); tokens live in locals
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file [env: CCCATALOG_CONFIG, CC_CATALOG_CONFIG_FILE; default ./config.yaml].",
    ),
]


class _State:
    """Per-invocation settings shared by the commands (verbosity, the redactor)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.verbosity = 0
        self.redactor = Redactor()


_state = _State()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cccatalog {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More narration (-vv: debug).")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors on stderr; no summary table.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """cccatalog keeps bare git mirrors of CodeCollections fresh and serves them to air-gapped sites.

    Example: cccatalog sync --config config.yaml
    """
    _state.verbosity = -1 if quiet else verbose
    setup_logging(_state.verbosity, _state.redactor)


def _load(config: Path | None) -> Config:
    from cccatalog.config import config_path_from_env, load_config

    cfg = load_config(config_path_from_env(config, os.environ))
    for warning in cfg.warnings:
        log.warning("%s: %s", cfg.path, warning)
    return cfg


@app.command(epilog="Example: cccatalog sync -c config.yaml -j 8 --only rw-cli-codecollection --json")
def sync(
    config: ConfigOpt = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Sync only this slug (repeatable).")
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, max=64, help="Repos synced at once [default: git.parallelism]."),
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Skip repos another process is syncing instead of waiting.")
    ] = False,
    allow_runtime_sync: Annotated[
        bool,
        typer.Option(
            "--allow-runtime-sync", help="Fetch even though git.runtime_sync is false (air-gap guard)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    git_half: Annotated[bool, typer.Option("--git/--no-git", help="Sync the git mirrors.")] = True,
    images: Annotated[
        bool, typer.Option("--images/--no-images", help="Poll the newest image builds.")
    ] = True,
) -> None:
    """Bring every git mirror up to date and record the newest image build of every ref."""
    from cccatalog.catalog.store import Store
    from cccatalog.jobs import SyncRequest, check_only, reaches_network, run_locks, run_sync

    cfg = _load(config)
    request = SyncRequest(git=git_half, images=images, only=tuple(only or ()), jobs=jobs, no_wait=no_wait)
    check_only(cfg, request.only)
    if git_half and not cfg.git.enabled:
        log.warning("git mirroring is disabled (git.enabled is false in %s)", cfg.path)
    if not cfg.git.runtime_sync and not allow_runtime_sync and reaches_network(cfg, request):
        raise UsageError(
            f"git.runtime_sync is false in {cfg.path}: this host is meant to stay air-gapped. "
            "Pass --allow-runtime-sync to reach the upstreams and registries anyway."
        )
    with run_locks(cfg, request) as granted, Store.open(cfg.state.path) as store:
        report = run_sync(
            cfg, store, granted, redactor=_state.redactor, environ=os.environ, run_git=_run_with_progress
        )
    _render_sync(report, as_json=as_json)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


def _run_with_progress(syncer: MirrorSyncer, tasks: list[RepoTask]) -> list[RepoResult]:
    def narrate(result: RepoResult) -> None:
        if result.failed:
            log.error("%s: %s", result.slug, result.error)
        else:
            log.info("%s: %s %s", result.slug, result.action, result.head_commit or "")

    if _state.verbosity < 0 or not sys.stderr.isatty() or not tasks:
        return syncer.run(tasks, on_done=narrate)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]sync"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=Console(stderr=True), transient=True,
    )  # fmt: skip
    with progress:
        bar = progress.add_task("", total=len(tasks))

        def done(result: RepoResult) -> None:
            narrate(result)
            progress.update(bar, advance=1, description=f"{result.slug} {result.action}")

        return syncer.run(tasks, on_done=done)


def _render_sync(report: SyncReport, *, as_json: bool) -> None:
    if as_json:
        counts: dict[str, int] = {}
        for r in report.git:
            counts[r.action.value] = counts.get(r.action.value, 0) + 1
        payload: dict[str, Any] = {
            "ok": not report.failed,
            "counts": counts,
            "repos": [
                {
                    "slug": r.slug,
                    "action": r.action.value,
                    "upstream_url": r.upstream_url,
                    "head_commit": r.head_commit,
                    "default_branch": r.default_branch,
                    "duration_s": r.duration_s,
                    "error": r.error,
                    "note": r.note,
                }
                for r in report.git
            ],
            "images": [
                {
                    "slug": r.slug,
                    "source": r.source,
                    "refs": r.refs,
                    "deactivated": r.deactivated,
                    "latest_tag": r.latest_tag,
                    "stable_tag": r.stable_tag,
                    "duration_s": r.duration_s,
                    "error": r.error,
                    "note": r.note,
                }
                for r in report.images
            ],
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    if _state.verbosity < 0:
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, soft_wrap=False)
    if report.git:
        table = Table(title="git mirrors", title_justify="left")
        for column in ("slug", "action", "head", "duration", "error"):
            table.add_column(column, overflow="fold")
        styles = {"failed": "red", "skipped": "yellow", "unchanged": "dim"}
        for r in report.git:
            table.add_row(
                r.slug,
                f"[{styles.get(r.action.value, 'green')}]{r.action.value}[/]",
                (r.head_commit or "")[:12],
                f"{r.duration_s:.1f}s",
                escape(r.error or r.note or ""),
            )
        console.print(table)
    if report.images:
        table = Table(title="images", title_justify="left")
        for column in ("slug", "refs", "inactive", "latest", "stable", "error"):
            table.add_column(column, overflow="fold")
        for i in report.images:
            problem = f"[red]{escape(i.error)}[/]" if i.error else escape(i.note or "")
            table.add_row(
                i.slug, str(i.refs), str(i.deactivated), i.latest_tag or "", i.stable_tag or "", problem
            )
        console.print(table)


@app.command(epilog="Example: cccatalog demo --dir /tmp/cccatalog-demo --port 8080")
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the demo.")] = Path(
        "cccatalog-demo"
    ),
    port: Annotated[int, typer.Option("--port", help="Port to serve on (a free one if it is taken).")] = 8080,
    serve_it: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the mirrors after syncing.")
    ] = True,
) -> None:
    """Create local upstream CodeCollections, mirror them with sync, serve them, print a clone line."""
    from cccatalog.catalog.store import Store
    from cccatalog.config import load_config
    from cccatalog.demo import build_demo
    from cccatalog.gitmirror.git import Git
    from cccatalog.gitmirror.layout import Layout
    from cccatalog.jobs import SyncRequest, run_sync
    from cccatalog.server.app import serve_forever
    from cccatalog.server.service import build_service

    root = directory.resolve()
    git = Git(redactor=_state.redactor)
    port = _free_port("127.0.0.1", port)
    base_url = f"http://127.0.0.1:{port}/git" if serve_it else None
    cfg = load_config(build_demo(root, git, public_base_url=base_url))
    with Store.open(cfg.state.path) as store:
        report = run_sync(cfg, store, SyncRequest(), redactor=_state.redactor, environ=os.environ)
    _render_sync(report, as_json=False)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)
    slug = report.git[0].slug
    sys.stdout.write(f"\nConfig: {cfg.path}\nMirrors: {cfg.git.data_dir}\n")
    if not serve_it:
        sys.stdout.write(f"Try:\n  git clone {Layout(cfg.git.data_dir).repo(slug).as_uri()}\n")
        return
    service = build_service(cfg, environ=os.environ, redactor=_state.redactor)
    server = _bind(service, "127.0.0.1", port, fallback=True)
    clone_url = f"{server.url}{cfg.git.mount_path}/{slug}.git"
    sys.stdout.write(f"Serving on {server.url} (Ctrl-C stops). Try:\n  git clone {clone_url}\n")
    sys.stdout.write(f"Catalog: {server.url}/api/v1/catalog/codecollections?only_with_image=false\n")
    sys.stdout.flush()
    try:
        serve_forever(server)
    finally:
        service.close()


def _free_port(host: str, wanted: int) -> int:
    """`wanted` if it can be bound now, else a free port the kernel picks."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, wanted))
        except OSError:
            probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _bind(service: Service, host: str, port: int, *, fallback: bool = False) -> CatalogServer:
    from dataclasses import replace

    from cccatalog.server.app import CatalogServer

    settings = replace(service.api.config.serve, host=host, port=port)
    try:
        return CatalogServer((host, port), service.api, settings)
    except OSError as exc:
        if fallback:
            return CatalogServer((host, 0), service.api, settings)
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@app.command(epilog="Example: cccatalog serve --config config.yaml --host 0.0.0.0 --port 8080")
def serve(
    config: ConfigOpt = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to listen on [env: CC_CATALOG_HOST; default serve.host]."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=0, max=65535, help="Port [env: CC_CATALOG_PORT; default serve.port]."),
    ] = None,
    get: Annotated[
        str | None, typer.Option("--get", help="Answer one API request in-process, print it, and exit.")
    ] = None,
    git_sync_minutes: Annotated[
        int | None, typer.Option("--git-sync-minutes", min=1, help="Sync git every N minutes [scheduler.*].")
    ] = None,
    catalog_poll_minutes: Annotated[
        int | None, typer.Option("--catalog-poll-minutes", min=1, help="Poll images every N minutes.")
    ] = None,
) -> None:
    """Serve the mirrors over read-only git smart HTTP, plus the catalog, status and admin JSON API."""
    from cccatalog.server.app import serve_forever
    from cccatalog.server.service import Scheduler, build_service

    cfg = _load(config)
    service = build_service(cfg, environ=os.environ, redactor=_state.redactor)
    try:
        if get is not None:
            raise typer.Exit(_print_get(service, get))
        host = host or os.environ.get("CCCATALOG_HOST") or os.environ.get("CC_CATALOG_HOST") or cfg.serve.host
        env_port = os.environ.get("CCCATALOG_PORT") or os.environ.get("CC_CATALOG_PORT")
        port = (
            port if port is not None else int(env_port) if env_port and env_port.isdigit() else cfg.serve.port
        )
        server = _bind(service, host, port)
        service.scheduler = Scheduler(
            service.api,
            git_minutes=git_sync_minutes or cfg.scheduler.git_sync_minutes,
            catalog_minutes=catalog_poll_minutes or cfg.scheduler.catalog_poll_minutes,
        )
        if _state.verbosity >= 0:
            for name in ("cccatalog.access", "cccatalog.serve"):
                logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger("cccatalog.serve").info(
            "serving %s (git under %s/)", server.url, cfg.git.mount_path
        )
        serve_forever(server)
    finally:
        service.close()


def _print_get(service: Service, target: str) -> int:
    from urllib.parse import urlsplit

    from cccatalog.server.api import handle as handle_api

    parts = urlsplit(target if target.startswith("/") else "/" + target)
    token = os.environ.get("CCCATALOG_ADMIN_TOKEN") or os.environ.get("CC_CATALOG_ADMIN_TOKEN")
    answer = handle_api(service.api, "GET", parts.path, parts.query, f"Bearer {token}" if token else None)
    if answer is None:
        sys.stdout.write("404\n" + json.dumps({"detail": "Not Found"}) + "\n")
        return EXIT_FAILED
    sys.stdout.write(f"{answer.status}\n{json.dumps(answer.body, indent=2)}\n")
    return EXIT_OK if answer.status < 400 else EXIT_FAILED


@app.command(
    epilog="Example: cccatalog bake -c config.bake.yaml --dest /opt/git --token-file /run/secrets/gh"
)
def bake(
    config: ConfigOpt = None,
    dest: Annotated[Path, typer.Option("--dest", help="Directory to bake the mirrors into.")] = Path("git"),
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="Read the git token from a file (a BuildKit secret).")
    ] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, max=64, help="Repos at once.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Mirror every CodeCollection with a git_url into DEST and write DEST/manifest.json (image builds)."""
    from cccatalog.gitmirror.bake import bake as bake_mirrors
    from cccatalog.gitmirror.git import Git
    from cccatalog.jobs import SyncReport

    cfg = _load(config)
    dest = dest.resolve()
    result = bake_mirrors(
        cfg, dest, Git(redactor=_state.redactor), environ=os.environ, token_file=token_file, jobs=jobs
    )
    _render_sync(SyncReport(git=result.repos), as_json=as_json)
    if not result.repos:
        raise CCCatalogError(f"nothing to bake: no CodeCollection in {cfg.path} has a git_url")
    if result.manifest is None:
        raise typer.Exit(EXIT_FAILED)
    log.info("wrote %s", result.manifest)


@app.command(
    "resolve-latest",
    epilog="Example: cccatalog resolve-latest ghcr.io/runwhen-contrib/rw-cli-codecollection --ref main",
)
def resolve_latest(
    target: Annotated[
        str, typer.Argument(help="Image repository (ghcr.io/org/repo) or a slug from the config.")
    ],
    ref: Annotated[
        str | None, typer.Option("--ref", help="Ref to resolve [default: the slug's default_ref, or main].")
    ] = None,
    all_refs: Annotated[
        bool, typer.Option("--all-refs", help="Resolve every ref in the repository.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    plain_http: Annotated[
        bool, typer.Option("--plain-http", help="Allow plain HTTP to a non-loopback registry.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Which image tag is really the newest build of a ref, and why (built_at and where it came from)."""
    from cccatalog.oci.cache import BlobCache
    from cccatalog.oci.client import RegistryClient
    from cccatalog.oci.resolve import resolve_repository

    repo, auth_for, default_ref = _resolve_target(target, config, plain_http=plain_http)
    wanted = None if all_refs else [ref or default_ref]
    cache = BlobCache(_user_cache_dir() / "oci")
    with RegistryClient(auth_for=auth_for, cache=cache) as client:
        resolutions = resolve_repository(client, repo, refs=wanted)
        requests = dict(client.counts)
    if not resolutions:
        raise CCCatalogError(
            f"{repo.name}: no builds of {wanted[0] if wanted else 'any ref'} (tags <ref>-<sha7>-<sha7>)"
        )
    render_resolutions(repo.name, resolutions, requests, as_json=as_json, verbose=_state.verbosity > 0)


def _resolve_target(
    target: str, config: Path | None, *, plain_http: bool
) -> tuple[Repository, Callable[[str], RegistryAuth | None], str]:
    """A slug from the config (its registry, source auth, default ref) or an image reference (the
    user's Docker/Podman logins)."""
    from cccatalog.config import config_path_from_env
    from cccatalog.credentials import user_registry_credentials
    from cccatalog.oci.auth import RegistryAuth
    from cccatalog.oci.reference import parse_reference

    path = config_path_from_env(config, os.environ)
    if "/" not in target and (config is not None or path.exists()):
        cfg = _load(config)
        cc = cfg.collection(target)
        source = cfg.source(cc.source) if cc else None
        if cc is None or source is None or not cc.image_registry:
            raise UsageError(f"{target}: not a CodeCollection with an image_registry in {cfg.path}")
        from cccatalog.catalog.images import registry_auth

        repo, _ = parse_reference(cc.image_registry, allow_plain_http=plain_http or source.plain_http)

        def source_auth(host: str) -> RegistryAuth | None:
            auth = registry_auth(source, host, os.environ)
            if auth:
                _state.redactor.add(*auth.secrets)
            return auth

        return repo, source_auth, cc.default_ref
    repo, _tag = parse_reference(target, allow_plain_http=plain_http)

    def user_auth(host: str) -> RegistryAuth | None:
        creds = user_registry_credentials(host, os.environ)
        if creds:
            _state.redactor.add(*creds.secrets)
        return RegistryAuth(basic=creds) if creds else None

    return repo, user_auth, "main"


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cccatalog"


def render_resolutions(
    name: str, resolutions: Sequence[RefResolution], requests: dict[str, int], *, as_json: bool, verbose: bool
) -> None:
    from cccatalog.catalog.views import rfc3339

    def build(b: Build) -> dict[str, Any]:
        return {
            "tag": b.tag.tag,
            "digest": b.digest,
            "built_at": rfc3339(b.built_at),
            "built_at_source": b.source,
            "commit": b.tag.commit,
            "rt_revision": b.tag.rt_revision,
            "error": b.error,
        }

    if as_json:
        payload = {
            "repository": name,
            "refs": [
                {"ref": r.ref, "newest": build(r.newest), "candidates": [build(c) for c in r.candidates]}
                for r in resolutions
            ],
            "requests": sum(requests.values()),
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=name, title_justify="left")
    for column in ("ref", "newest tag", "built_at", "source", "digest", "candidates"):
        table.add_column(column, overflow="fold")
    for r in resolutions:
        n = r.newest
        when = rfc3339(n.built_at) or "unknown"
        table.add_row(r.ref, n.tag.tag, when, n.source, (n.digest or "")[:19], str(len(r.candidates)))
    Console(file=sys.stdout, soft_wrap=False).print(table)
    if verbose:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(requests.items()))
        sys.stderr.write(f"{sum(requests.values())} registry requests ({detail})\n")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting (tests call this)."""
    _state.reset()
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=list(argv) if argv is not None else None, prog_name="cccatalog", standalone_mode=False
        )
    except typer.TyperException as exc:
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        return int(exc.exit_code)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return 130
    except CCCatalogError as exc:
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else EXIT_OK


def _print_error(exc: CCCatalogError) -> None:
    from rich.console import Console
    from rich.markup import escape

    message = _state.redactor(str(exc))
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/] {escape(message)}")
    if _state.verbosity > 1:
        import traceback

        sys.stderr.write(_state.redactor("".join(traceback.format_exception(exc))))


def main() -> None:
    from cccatalog.gitmirror.children import end_children_with_process

    end_children_with_process()
    code = run()
    sys.exit(code if code in (EXIT_OK, EXIT_FAILED, EXIT_USAGE, 130) else EXIT_FAILED)
