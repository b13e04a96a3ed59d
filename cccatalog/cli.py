"""The command line: parse options, load config, call one core function, render. The only place that exits.

Every CCCatalogError is turned into one red line and its exit code here (0 ok, 1 something failed,
2 usage or config); a traceback is shown only with -vv.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cccatalog import __version__
from cccatalog.catalog.store import Store
from cccatalog.config import Config, config_path_from_env, load_config
from cccatalog.demo import build_demo
from cccatalog.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CCCatalogError, UsageError
from cccatalog.gitmirror.git import Git
from cccatalog.gitmirror.layout import Layout
from cccatalog.gitmirror.sync import MirrorSyncer, RepoResult, RepoTask, SyncOptions, plan_sync
from cccatalog.logs import LOGGER_NAME, setup_logging
from cccatalog.redact import Redactor
from cccatalog.server.app import CatalogServer, serve_forever
from cccatalog.server.live_config import LiveConfig

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
) -> None:
    """Bring every configured git mirror up to date (clone, update, or rebuild a broken one)."""
    cfg = _load(config)
    if not cfg.git.enabled:
        log.warning("git mirroring is disabled (git.enabled is false in %s); nothing to sync", cfg.path)
    elif not cfg.git.runtime_sync and not allow_runtime_sync:
        raise UsageError(
            f"git.runtime_sync is false in {cfg.path}: this host is meant to stay air-gapped. "
            "Pass --allow-runtime-sync to fetch from the upstreams anyway."
        )
    tasks = plan_sync(cfg, only=only or ()) if cfg.git.enabled else []
    with Store.open(cfg.state.path) as store:
        store.upsert_collections(cfg.codecollections)
        syncer = MirrorSyncer(
            git=Git(redactor=_state.redactor),
            layout=Layout(cfg.git.data_dir),
            options=SyncOptions.from_config(cfg, jobs=jobs, no_wait=no_wait),
            environ=os.environ,
            store=store,
        )
        results = _run_with_progress(syncer, tasks)
    _render_sync(results, as_json=as_json)
    if any(r.failed for r in results):
        raise typer.Exit(EXIT_FAILED)


def _run_with_progress(syncer: MirrorSyncer, tasks: list[RepoTask]) -> list[RepoResult]:
    def narrate(result: RepoResult) -> None:
        if result.failed:
            log.error("%s: %s", result.slug, result.error)
        else:
            log.info("%s: %s %s", result.slug, result.action, result.head_commit or "")

    if _state.verbosity < 0 or not sys.stderr.isatty() or not tasks:
        return syncer.run(tasks, on_done=narrate)
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


def _render_sync(results: Sequence[RepoResult], *, as_json: bool) -> None:
    if as_json:
        counts: dict[str, int] = {}
        for r in results:
            counts[r.action.value] = counts.get(r.action.value, 0) + 1
        payload: dict[str, Any] = {
            "ok": not any(r.failed for r in results),
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
                }
                for r in results
            ],
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    if _state.verbosity < 0 or not results:
        return
    table = Table(title="git mirrors", title_justify="left")
    for column in ("slug", "action", "head", "duration", "error"):
        table.add_column(column, overflow="fold")
    styles = {"failed": "red", "skipped": "yellow", "unchanged": "dim"}
    for r in results:
        table.add_row(
            r.slug,
            f"[{styles.get(r.action.value, 'green')}]{r.action.value}[/]",
            (r.head_commit or "")[:12],
            f"{r.duration_s:.1f}s",
            escape(r.error or ""),
        )
    Console(file=sys.stdout, soft_wrap=False).print(table)


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
    root = directory.resolve()
    git = Git(redactor=_state.redactor)
    cfg = load_config(build_demo(root, git))
    with Store.open(cfg.state.path) as store:
        store.upsert_collections(cfg.codecollections)
        syncer = MirrorSyncer(
            git=git,
            layout=Layout(cfg.git.data_dir),
            options=SyncOptions.from_config(cfg),
            environ=os.environ,
            store=store,
        )
        results = syncer.run(plan_sync(cfg))
    _render_sync(results, as_json=False)
    if any(r.failed for r in results):
        raise typer.Exit(EXIT_FAILED)
    slug = results[0].slug
    sys.stdout.write(f"\nConfig: {cfg.path}\nMirrors: {cfg.git.data_dir}\n")
    if not serve_it:
        sys.stdout.write(f"Try:\n  git clone {Layout(cfg.git.data_dir).repo(slug).as_uri()}\n")
        return
    server = _bind(cfg, "127.0.0.1", port, fallback=True)
    clone_url = f"{server.url}{cfg.git.mount_path}/{slug}.git"
    sys.stdout.write(f"Serving on {server.url} (Ctrl-C stops). Try:\n  git clone {clone_url}\n")
    sys.stdout.flush()
    serve_forever(server)


def _bind(cfg: Config, host: str, port: int, *, fallback: bool = False) -> CatalogServer:
    settings = replace(cfg.serve, host=host, port=port)
    live = LiveConfig(cfg)
    try:
        return CatalogServer((host, port), live, settings)
    except OSError as exc:
        if fallback:
            return CatalogServer((host, 0), live, settings)
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
) -> None:
    """Serve the mirrors over read-only git smart HTTP (SIGHUP or a changed config file reloads)."""
    cfg = _load(config)
    host = host or os.environ.get("CCCATALOG_HOST") or os.environ.get("CC_CATALOG_HOST") or cfg.serve.host
    env_port = os.environ.get("CCCATALOG_PORT") or os.environ.get("CC_CATALOG_PORT")
    port = port if port is not None else int(env_port) if env_port and env_port.isdigit() else cfg.serve.port
    server = _bind(cfg, host, port)
    if _state.verbosity >= 0:
        for name in ("cccatalog.access", "cccatalog.serve"):
            logging.getLogger(name).setLevel(logging.INFO)
    log.warning(
        "serving %s%s/ from %s", server.url, cfg.git.mount_path, cfg.git.data_dir
    ) if _state.verbosity >= 0 else None
    serve_forever(server)


def _not_yet(name: str) -> None:
    raise UsageError(f"`cccatalog {name}` is not implemented yet")


@app.command(epilog="Example: cccatalog bake --config config.bake.yaml --dest /opt/cc-catalog/git")
def bake(config: ConfigOpt = None) -> None:
    """Produce mirrors and a manifest to bake into a release image (not implemented yet)."""
    _not_yet("bake")


@app.command(
    "resolve-latest",
    epilog="Example: cccatalog resolve-latest ghcr.io/runwhen-contrib/rw-cli-codecollection --ref main",
)
def resolve_latest(config: ConfigOpt = None) -> None:
    """Which image tag is really the newest build of a branch, and why (not implemented yet)."""
    _not_yet("resolve-latest")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting (tests call this)."""
    _state.reset()
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=list(argv) if argv is not None else None, prog_name="cccatalog", standalone_mode=False
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return 130
    except CCCatalogError as exc:
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else EXIT_OK


def _print_error(exc: CCCatalogError) -> None:
    message = _state.redactor(str(exc))
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/] {escape(message)}")
    if _state.verbosity > 1:
        import traceback

        sys.stderr.write(_state.redactor("".join(traceback.format_exception(exc))))


def main() -> None:
    code = run()
    sys.exit(code if code in (EXIT_OK, EXIT_FAILED, EXIT_USAGE, 130) else EXIT_FAILED)
