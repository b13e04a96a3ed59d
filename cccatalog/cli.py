"""The command line: parse options, load config, call one core function, render. The only place that exits.

Every CCCatalogError becomes one `error:` line and its exit code here (0 ok, 1 something failed,
2 usage or config); a traceback is shown only with -vv. Environment fallbacks are declared on the
options themselves, so they are validated like the options. The global flags (-v, -q,
--log-format) work before or after the command.

Each command imports what it needs when it runs: `resolve-latest` and `--help` do not pay for the
server, git and SQLite modules (nor `sync` for the registry client's), which is most of start-up.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cccatalog import __version__, envvars
from cccatalog.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CCCatalogError, UsageError
from cccatalog.logs import LOG_FORMAT_VAR, LogFormat, setup_logging
from cccatalog.redact import Redactor

if TYPE_CHECKING:
    from cccatalog.config import Config


@dataclass
class Invocation:
    """Per-invocation settings, carried in the Typer context: how much to say, and the redactor every
    message passes through."""

    verbosity: int = 0
    redactor: Redactor = field(default_factory=Redactor)
    log_format: LogFormat = LogFormat.TEXT

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0


def _example(*commands: str) -> str:
    # "\b" keeps the help formatter from re-wrapping the paragraph: examples are copied as printed.
    return "\b\n" + "\n".join(f"Example: {command}" for command in commands)


app = typer.Typer(
    name="cccatalog",
    help="Air-gap git mirrors and image catalog for CodeCollections.\n\n"
    "A CodeCollection is a git repository of automation tasks plus the container images built from it.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion; costs no import when unused
    pretty_exceptions_enable=False,  # errors are rendered by run(); tokens live in locals
    rich_markup_mode=None,  # plain help: brackets in option help are text, and nothing is folded
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", envvar=list(envvars.CONFIG), show_envvar=True, metavar="FILE",
        help="Config file (default: ./config.yaml).",
    ),
]  # fmt: skip
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout, nothing else.")]
JobsOpt = Annotated[
    int | None,
    typer.Option("--jobs", "-j", min=1, max=64, metavar="N", help="Repos at once [git.parallelism]."),
]


SignKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--sign-key", metavar="KEY",
        help="Sign the manifest with this SSH private key (ssh-keygen -Y sign; a .pub uses ssh-agent).",
    ),
]  # fmt: skip


HostOpt = typer.Option(
    "--host",
    envvar=list(envvars.HOST),
    show_envvar=True,
    metavar="ADDR",
    help="Address to listen on [serve.host].",
)
PortOpt = typer.Option(
    "--port",
    envvar=list(envvars.PORT),
    show_envvar=True,
    min=0,
    max=65535,
    help="Port to listen on [serve.port].",
)


def _inv(ctx: typer.Context) -> Invocation:
    return ctx.ensure_object(Invocation)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cccatalog {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            show_default=False,
            help="Say more: -v narrates each step, -vv also logs every git command and registry request, "
            "and shows tracebacks.",
        ),
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr; no table.")] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar=[LOG_FORMAT_VAR],
            show_envvar=True,
            case_sensitive=False,
            help="text, or json: one JSON object per line on stderr, for a log pipeline.",
        ),
    ] = LogFormat.TEXT,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """cccatalog keeps bare git mirrors of CodeCollections fresh and serves them to air-gapped sites."""
    inv = _inv(ctx)
    inv.verbosity = -1 if quiet else verbose
    inv.log_format = log_format
    setup_logging(inv.verbosity, inv.redactor, log_format=log_format)


def _load(config: Path | None) -> Config:
    import logging

    from cccatalog.config import load_config
    from cccatalog.logs import LOGGER_NAME

    cfg = load_config(config)
    for warning in cfg.warnings:
        logging.getLogger(LOGGER_NAME).warning("%s: %s", cfg.path, warning)
    return cfg


@app.command(epilog=_example("cccatalog sync -c config.yaml -j 8 --only rw-cli-codecollection --json"))
def sync(
    ctx: typer.Context,
    config: ConfigOpt = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", metavar="SLUG", help="Sync only this slug (repeatable).")
    ] = None,
    jobs: JobsOpt = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Skip repos another process is syncing instead of waiting.")
    ] = False,
    allow_runtime_sync: Annotated[
        bool, typer.Option("--allow-runtime-sync", help="Fetch even though git.runtime_sync is false.")
    ] = False,
    as_json: JsonOpt = False,
    git_half: Annotated[bool, typer.Option("--git/--no-git", help="Sync the git mirrors.")] = True,
    images: Annotated[
        bool, typer.Option("--images/--no-images", help="Poll the newest image builds.")
    ] = True,
) -> None:
    """Bring every git mirror up to date and record the newest image build of every ref."""
    from cccatalog import render
    from cccatalog.jobs import SyncRequest, perform_sync

    inv = _inv(ctx)
    request = SyncRequest(git=git_half, images=images, only=tuple(only or ()), jobs=jobs, no_wait=no_wait)
    report = perform_sync(
        _load(config), request, allow_runtime_sync=allow_runtime_sync, redactor=inv.redactor,
        environ=os.environ, run_git=render.sync_progress(quiet=inv.quiet),
    )  # fmt: skip
    render.sync_report(report, as_json=as_json, quiet=inv.quiet)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


@app.command(epilog=_example("cccatalog check -c config.yaml --network"))
def check(
    ctx: typer.Context,
    config: ConfigOpt = None,
    network: Annotated[
        bool, typer.Option("--network", help="Also ask each upstream and registry (read-only requests).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the config, the variables it names, the state file and the data directory; change nothing."""
    from cccatalog import render
    from cccatalog.check import check as run_check

    inv = _inv(ctx)
    report = run_check(_load(config), environ=os.environ, redactor=inv.redactor, network=network)
    render.check_report(report, as_json=as_json)
    render.check_failures(report)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


@app.command(epilog=_example("cccatalog status -c config.yaml --max-age 2h --json"))
def status(
    ctx: typer.Context,
    config: ConfigOpt = None,
    max_age: Annotated[
        str | None,
        typer.Option(
            "--max-age",
            metavar="AGE",
            help="Oldest acceptable last sync: 90m, 2h, 1d [serve.freshness_budget_minutes].",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Is every mirror fresh? Reads the state file only (no network); exit 1 when one is stale or failing."""
    from cccatalog import render
    from cccatalog.status import parse_duration, status_from_state

    inv = _inv(ctx)
    seconds = parse_duration(max_age) if max_age is not None else None
    report = status_from_state(_load(config), max_age_seconds=seconds)
    render.status_report(report, as_json=as_json, quiet=inv.quiet)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


@app.command(epilog=_example("cccatalog demo --dir /tmp/cccatalog-demo --port 8080"))
def demo(
    ctx: typer.Context,
    directory: Annotated[
        Path, typer.Option("--dir", metavar="DIR", help="Where to create the demo (new, empty, or a demo's).")
    ] = Path("cccatalog-demo"),
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to serve on (a free one if it is taken).")
    ] = 8080,
    serve_it: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the mirrors after syncing.")
    ] = True,
    once: Annotated[
        bool, typer.Option("--once", help="Serve, clone once through the server with git, then exit.")
    ] = False,
) -> None:
    """Create local upstream CodeCollections, mirror them with sync, serve them, print a clone line."""
    from cccatalog import render
    from cccatalog.demo import demo_directory, run_demo

    inv = _inv(ctx)
    with demo_directory(directory.resolve()) as root:
        ok = run_demo(
            root, port=port, serve=serve_it, once=once, redactor=inv.redactor, environ=os.environ,
            show_report=lambda report: render.sync_report(report, as_json=False, quiet=inv.quiet),
            say=render.say,
        )  # fmt: skip
    if not ok:
        raise typer.Exit(EXIT_FAILED)


@app.command(epilog=_example("cccatalog serve --config config.yaml --host 0.0.0.0 --port 8080"))
def serve(
    ctx: typer.Context,
    config: ConfigOpt = None,
    host: Annotated[str | None, HostOpt] = None,
    port: Annotated[int | None, PortOpt] = None,
    get: Annotated[
        str | None,
        typer.Option(
            "--get", metavar="PATH", help="Answer one API request in-process, print it, exit 0 or 1."
        ),
    ] = None,
    git_sync_minutes: Annotated[
        int | None, typer.Option("--git-sync-minutes", min=1, metavar="N", help="Sync git every N minutes.")
    ] = None,
    catalog_poll_minutes: Annotated[
        int | None,
        typer.Option("--catalog-poll-minutes", min=1, metavar="N", help="Poll images every N minutes."),
    ] = None,
) -> None:
    """Serve the mirrors over read-only git smart HTTP, plus the catalog, status and admin JSON API."""
    from cccatalog.logs import announce_server_logs
    from cccatalog.server.service import get_once, run_server

    inv = _inv(ctx)
    cfg = _load(config)
    if get is not None:
        import json

        status, body = get_once(cfg, get, environ=os.environ, redactor=inv.redactor)
        sys.stdout.write(f"{status}\n{json.dumps(body, indent=2)}\n")
        raise typer.Exit(EXIT_OK if status < 400 else EXIT_FAILED)
    announce_server_logs(inv.verbosity)
    run_server(
        cfg, host=host or cfg.serve.host, port=cfg.serve.port if port is None else port,
        environ=os.environ, redactor=inv.redactor,
        git_sync_minutes=git_sync_minutes, catalog_poll_minutes=catalog_poll_minutes,
    )  # fmt: skip


@app.command(
    epilog=_example("cccatalog bake -c config.bake.yaml --dest /opt/git --token-file /run/secrets/gh")
)
def bake(
    ctx: typer.Context,
    config: ConfigOpt = None,
    dest: Annotated[
        Path, typer.Option("--dest", metavar="DIR", help="Directory to bake the mirrors into.")
    ] = Path("git"),
    token_file: Annotated[
        Path | None, typer.Option("--token-file", metavar="FILE", help="Read the git token from a file.")
    ] = None,
    jobs: JobsOpt = None,
    as_json: JsonOpt = False,
    sign_key: SignKeyOpt = None,
) -> None:
    """Mirror every CodeCollection with a git_url into DEST and write DEST/manifest.json."""
    from cccatalog import render
    from cccatalog.gitmirror.bake import bake as bake_mirrors
    from cccatalog.gitmirror.git import Git
    from cccatalog.jobs import SyncReport

    inv = _inv(ctx)
    cfg = _load(config)
    result = bake_mirrors(
        cfg, dest.resolve(), Git(redactor=inv.redactor), environ=os.environ, token_file=token_file, jobs=jobs,
        sign_key=sign_key,
    )  # fmt: skip
    render.sync_report(SyncReport(git=result.repos), as_json=as_json, quiet=inv.quiet)
    if result.manifest is None:
        raise typer.Exit(EXIT_FAILED)


@app.command(epilog=_example("cccatalog manifest -c config.yaml --out site.json"))
def manifest(
    ctx: typer.Context,
    config: ConfigOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", metavar="FILE", help="Write it to FILE (default: stdout).")
    ] = None,
) -> None:
    """What this site has (every ref of every mirror, the image refs): carry it to export --since."""
    from cccatalog import render
    from cccatalog.gitmirror.git import Git
    from cccatalog.manifest import describe_site

    data = describe_site(_load(config), Git(redactor=_inv(ctx).redactor))
    render.manifest(data, out)


@app.command(
    epilog=_example("cccatalog export -c config.yaml --since site.json --out update.tar --sign-key release")
)
def export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="The update file to write (a tar).")],
    config: ConfigOpt = None,
    since: Annotated[
        Path | None,
        typer.Option("--since", metavar="FILE", help="The site's manifest; without it, a full export."),
    ] = None,
    sign_key: SignKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write one file that brings a site from its manifest to these mirrors and this catalog."""
    from cccatalog import render
    from cccatalog.gitmirror.git import Git
    from cccatalog.transfer.export import export_update

    inv = _inv(ctx)
    result = export_update(
        _load(config), Git(redactor=inv.redactor), out=out, since=since, sign_key=sign_key, environ=os.environ
    )
    render.export_result(result, as_json=as_json, quiet=inv.quiet)


@app.command("import", epilog=_example("cccatalog import update.tar -c config.yaml"))
def import_(
    ctx: typer.Context,
    update: Annotated[Path, typer.Argument(metavar="FILE", help="The update file `export` wrote.")],
    config: ConfigOpt = None,
    allowed_signers: Annotated[
        Path | None,
        typer.Option(
            "--allowed-signers", metavar="FILE", help="SSH allowed signers [transfer.allowed_signers]."
        ),
    ] = None,
    signer: Annotated[
        str | None,
        typer.Option("--signer", metavar="PRINCIPAL", help="Who must have signed [transfer.signer]."),
    ] = None,
    allow_unsigned: Annotated[
        bool, typer.Option("--allow-unsigned", help="Import an update that carries no signature.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Apply an update to this site's mirrors and catalog while serve keeps serving."""
    from cccatalog import render
    from cccatalog.gitmirror.git import Git
    from cccatalog.transfer.importer import import_update

    inv = _inv(ctx)
    result = import_update(
        _load(config), Git(redactor=inv.redactor), update, allowed_signers=allowed_signers, signer=signer,
        allow_unsigned=allow_unsigned, environ=os.environ,
    )  # fmt: skip
    render.import_result(result, as_json=as_json, quiet=inv.quiet)
    if result.failed:
        raise typer.Exit(EXIT_FAILED)


@app.command(
    "resolve-latest",
    epilog=_example("cccatalog resolve-latest ghcr.io/runwhen-contrib/rw-cli-codecollection --ref main"),
)
def resolve_latest(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            metavar="IMAGE|SLUG", help="An image repository (ghcr.io/org/repo) or a slug from the config."
        ),
    ],
    ref: Annotated[
        str | None,
        typer.Option("--ref", metavar="REF", help="Ref to resolve [the slug's default_ref, or main]."),
    ] = None,
    all_refs: Annotated[
        bool, typer.Option("--all-refs", help="Resolve every ref in the repository.")
    ] = False,
    as_json: JsonOpt = False,
    plain_http: Annotated[
        bool, typer.Option("--plain-http", help="Allow plain HTTP to a non-loopback registry.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Which image tag is really the newest build of a ref, and why (built_at and where it came from)."""
    from cccatalog import render
    from cccatalog.config import config_path_from_env
    from cccatalog.oci.targets import is_bare_name, newest_builds, resolve_target

    inv = _inv(ctx)
    if ref is not None and all_refs:
        raise UsageError("--ref and --all-refs cannot be used together (--all-refs resolves every ref)")
    path = config_path_from_env(config, os.environ)
    cfg = _load(config) if is_bare_name(target) and (config is not None or path.exists()) else None
    tgt = resolve_target(
        target, cfg, config_path=path, environ=os.environ, redactor=inv.redactor, plain_http=plain_http
    )
    found, requests = newest_builds(tgt, None if all_refs else [ref or tgt.default_ref], environ=os.environ)
    render.resolutions(tgt.repo.name, found, requests, as_json=as_json, verbose=inv.verbosity > 0)


# --- running ------------------------------------------------------------------------------------

_GLOBAL_FLAGS = frozenset({"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"})
_GLOBAL_OPTIONS = frozenset({"--log-format"})  # global options that take a value


def hoist_global_flags(group: Any, argv: Sequence[str]) -> list[str]:
    """`cccatalog sync -c x -v` as `cccatalog -v sync -c x`: the global flags (and `--log-format X`)
    also work after the command, as people type them. A flag that is the value of an option
    (`--only -v`) stays put."""
    args = list(argv)
    index = next((i for i, a in enumerate(args) if a in group.commands), None)
    if index is None:
        return args
    takes_value = {
        opt
        for param in group.commands[args[index]].params
        if not getattr(param, "is_flag", False) and not getattr(param, "count", False)
        for opt in param.opts
    }
    head, rest, hoisted = args[: index + 1], [], []
    i = index + 1
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        is_value = args[i - 1] in takes_value
        if arg in _GLOBAL_FLAGS and not is_value:
            hoisted.append(arg)
        elif arg in _GLOBAL_OPTIONS and not is_value and i + 1 < len(args):
            hoisted += args[i : i + 2]
            i += 1
        elif arg.partition("=")[0] in _GLOBAL_OPTIONS and not is_value:
            hoisted.append(arg)
        else:
            rest.append(arg)
        i += 1
    return hoisted + head + rest


def _early_log_format(args: Sequence[str], environ: Mapping[str, str]) -> LogFormat:
    """The log format asked for, known before the parser runs: its own errors are said in it too."""
    value = environ.get(LOG_FORMAT_VAR, "")
    for i, arg in enumerate(args):
        if arg in _GLOBAL_OPTIONS and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--log-format="):
            value = arg.partition("=")[2]
    return LogFormat.JSON if value.strip().lower() == LogFormat.JSON else LogFormat.TEXT


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting (tests call this)."""
    inv = Invocation()
    command = typer.main.get_command(app)
    args = hoist_global_flags(command, sys.argv[1:] if argv is None else argv)
    if _early_log_format(args, os.environ) is LogFormat.JSON:
        setup_logging(0, inv.redactor, log_format=LogFormat.JSON)
    try:
        result = command.main(args=args, prog_name="cccatalog", standalone_mode=False, obj=inv)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return 130
    except typer.TyperException as exc:  # usage errors of the option parser: the error first
        from cccatalog import render

        usage_ctx = getattr(exc, "ctx", None)
        details = []
        if usage_ctx is not None:
            details = [usage_ctx.get_usage(), f"Try '{usage_ctx.command_path} -h' for help."]
        if type(exc).__name__ == "NoArgsIsHelpError" and usage_ctx is not None:
            sys.stdout.write(usage_ctx.get_help() + "\n")
            return EXIT_USAGE
        render.error(_name_the_envvar(exc.format_message()), details=details)
        return int(exc.exit_code)
    except CCCatalogError as exc:
        _print_error(inv, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a filesystem or network fault nothing below handled: one line, no traceback
        _print_error(inv, exc)
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK


_ENVVAR_LIST = re.compile(r"\(env var: '\[([^\]]*)\]'\)")


def _name_the_envvar(message: str) -> str:
    """The parser names every fallback variable of an option; say which one held the bad value."""

    def which(match: re.Match[str]) -> str:
        names = re.findall(r"'([A-Z_]+)'", match.group(1))
        used = envvars.first_name(os.environ, names)
        return f"(from the environment variable {used})" if used else ""

    return re.sub(r" +:", ":", _ENVVAR_LIST.sub(which, message))


def _print_error(inv: Invocation, exc: BaseException) -> None:
    from cccatalog import render

    if isinstance(exc, OSError) and not isinstance(exc, CCCatalogError):
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror or type(exc).__name__}{where}"
    else:
        message = str(exc)
    trace = None
    if inv.verbosity > 1:
        import traceback

        trace = inv.redactor("".join(traceback.format_exception(exc)))
    render.error(inv.redactor(message), exc=trace)


def main() -> None:
    from cccatalog.gitmirror.children import end_children_with_process

    end_children_with_process()
    code = run()
    sys.exit(code if code in (EXIT_OK, EXIT_FAILED, EXIT_USAGE, 130) else EXIT_FAILED)
