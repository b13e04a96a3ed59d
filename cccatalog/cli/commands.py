"""The commands: each parses its options, loads the config, calls one library function and renders
what it returns. Each imports what it needs when it runs: `resolve-latest` and `--help` do not pay
for the server, git and SQLite modules (nor `sync` for the registry client's)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cccatalog import __version__
from cccatalog.cli import base
from cccatalog.cli.base import app, example, invocation, load
from cccatalog.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from cccatalog.logs import LogFormat, setup_logging


def _version(value: bool) -> None:
    if value:
        from cccatalog.extras import describe

        typer.echo("\n".join([f"cccatalog {__version__}", *describe()]))
        raise typer.Exit(EXIT_OK)


VersionOpt = Annotated[
    bool,
    typer.Option(
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and the optional parts it carries (postgres: yes/no), exit.",
    ),
]


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    verbose: base.Verbose = 0,
    quiet: base.Quiet = False,
    log_format: base.LogFormatOpt = LogFormat.TEXT,
    version: VersionOpt = False,
) -> None:
    """cccatalog keeps bare git mirrors of CodeCollections fresh and serves them to air-gapped sites."""
    if ctx.invoked_subcommand is None:  # `cccatalog` with no command: its help, as a usage error
        typer.echo(ctx.get_help())
        raise typer.Exit(EXIT_USAGE)
    inv = invocation(ctx)
    inv.verbosity, inv.log_format = (-1 if quiet else verbose), log_format
    setup_logging(inv.verbosity, inv.redactor, log_format=log_format)


def _failed_if(failed: bool) -> None:
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command(epilog=example("cccatalog sync -c config.yaml -j 8 --only rw-cli-codecollection --json"))
def sync(
    ctx: typer.Context,
    config: base.ConfigOpt = None,
    only: base.Only = None,
    jobs: base.JobsOpt = None,
    no_wait: base.NoWait = False,
    allow_runtime_sync: base.AllowRuntimeSync = False,
    as_json: base.JsonOpt = False,
    git_half: base.GitHalf = True,
    images: base.ImagesHalf = True,
) -> None:
    """Bring every git mirror up to date and record the newest image build of every ref."""
    from cccatalog import render
    from cccatalog.jobs import SyncRequest, perform_sync

    inv = invocation(ctx)
    request = SyncRequest(git=git_half, images=images, only=tuple(only or ()), jobs=jobs, no_wait=no_wait)
    with render.copy_progress("copy", quiet=inv.quiet) as progress:
        report = perform_sync(
            load(config),
            request,
            allow_runtime_sync=allow_runtime_sync,
            redactor=inv.redactor,
            environ=os.environ,
            run_git=render.sync_progress(quiet=inv.quiet),
            copy_progress=progress,
        )
    render.sync_report(report, as_json=as_json, quiet=inv.quiet)
    _failed_if(report.failed)


@app.command(epilog=example("cccatalog check -c config.yaml --network"))
def check(
    ctx: typer.Context,
    config: base.ConfigOpt = None,
    network: base.Network = False,
    as_json: base.JsonOpt = False,
) -> None:
    """Check the config, the variables it names, the state file and the data directory; change nothing."""
    from cccatalog import render
    from cccatalog.check import check as run_check

    report = run_check(load(config), environ=os.environ, redactor=invocation(ctx).redactor, network=network)
    render.check_report(report, as_json=as_json)
    render.check_failures(report)
    _failed_if(report.failed)


@app.command(epilog=example("cccatalog status -c config.yaml --max-age 2h --json"))
def status(
    ctx: typer.Context,
    config: base.ConfigOpt = None,
    max_age: base.MaxAge = None,
    as_json: base.JsonOpt = False,
) -> None:
    """Is every mirror fresh? Reads the state file only (no network); exit 1 when one is stale or failing."""
    from cccatalog import render
    from cccatalog.status import parse_duration, status_from_state

    seconds = parse_duration(max_age) if max_age is not None else None
    report = status_from_state(load(config), max_age_seconds=seconds)
    render.status_report(report, as_json=as_json, quiet=invocation(ctx).quiet)
    _failed_if(report.failed)


@app.command(epilog=example("cccatalog demo --dir /tmp/cccatalog-demo --port 8080"))
def demo(
    ctx: typer.Context,
    directory: base.DemoDir = Path("cccatalog-demo"),
    port: base.DemoPort = 8080,
    serve_it: base.DemoServe = True,
    once: base.Once = False,
) -> None:
    """Create local upstream CodeCollections, mirror them with sync, serve them, print a clone line."""
    from cccatalog import render
    from cccatalog.demo import demo_directory, run_demo

    inv = invocation(ctx)
    with demo_directory(directory.resolve()) as root:
        ok = run_demo(
            root,
            port=port,
            serve=serve_it,
            once=once,
            redactor=inv.redactor,
            environ=os.environ,
            show_report=lambda report: render.sync_report(report, as_json=False, quiet=inv.quiet),
            say=render.say,
        )
    _failed_if(not ok)


@app.command(epilog=example("cccatalog serve --config config.yaml --host 0.0.0.0 --port 8080"))
def serve(
    ctx: typer.Context,
    config: base.ConfigOpt = None,
    host: base.Host = None,
    port: base.Port = None,
    get: base.Get = None,
    git_sync_minutes: base.GitMinutes = None,
    catalog_poll_minutes: base.CatalogMinutes = None,
) -> None:
    """Serve the mirrors over read-only git smart HTTP, plus the catalog, status and admin JSON API."""
    from cccatalog import envvars
    from cccatalog.logs import announce_server_logs
    from cccatalog.server.service import get_once, run_server

    envvars.flag(os.environ, envvars.DISABLE_SCHEDULER)  # a bad value is refused before anything starts
    inv, cfg = invocation(ctx), load(config)
    if get is not None:
        from cccatalog import render  # only here: a server never draws a table

        status, body = get_once(cfg, get, environ=os.environ, redactor=inv.redactor)
        render.api_answer(status, body)
        _failed_if(status >= 400)
        return
    announce_server_logs(inv.verbosity)
    run_server(
        cfg,
        host=host or cfg.serve.host,
        port=cfg.serve.port if port is None else port,
        environ=os.environ,
        redactor=inv.redactor,
        git_sync_minutes=git_sync_minutes,
        catalog_poll_minutes=catalog_poll_minutes,
    )


@app.command(epilog=example("cccatalog probe", "cccatalog probe http://127.0.0.1:8080/readyz --timeout 2"))
def probe(
    url: base.ProbeTarget = None, port: base.ProbePort = None, timeout: base.ProbeTimeout = 5.0
) -> None:
    """Ask a running serve over HTTP (a HEALTHCHECK without curl); exit 1 unless it answers 2xx in time."""
    from cccatalog import render
    from cccatalog.probe import probe as ask
    from cccatalog.probe import probe_url

    result = ask(probe_url(url, port=8080 if port is None else port), timeout=timeout)
    render.probe_answer(result)
    _failed_if(not result.ok)


@app.command(
    epilog=example("cccatalog bake -c config.bake.yaml --dest /opt/git --token-file /run/secrets/gh")
)
def bake(
    ctx: typer.Context,
    config: base.ConfigOpt = None,
    dest: base.Dest = Path("git"),
    token_file: base.TokenFile = None,
    jobs: base.JobsOpt = None,
    as_json: base.JsonOpt = False,
    sign_key: base.SignKeyOpt = None,
) -> None:
    """Mirror every CodeCollection with a git_url into DEST and write DEST/manifest.json."""
    from cccatalog import render
    from cccatalog.bake import bake as bake_mirrors
    from cccatalog.gitmirror.git import Git
    from cccatalog.jobs import SyncReport

    inv = invocation(ctx)
    result = bake_mirrors(
        load(config),
        dest.resolve(),
        Git(redactor=inv.redactor),
        environ=os.environ,
        token_file=token_file,
        jobs=jobs,
        sign_key=sign_key,
    )
    render.sync_report(SyncReport(git=result.repos), as_json=as_json, quiet=inv.quiet)
    _failed_if(result.manifest is None)


@app.command(epilog=example("cccatalog manifest -c config.yaml --out site.json"))
def manifest(ctx: typer.Context, config: base.ConfigOpt = None, out: base.ManifestOut = None) -> None:
    """What this site has (every ref of every mirror, the image refs, what its registry holds of them):
    carry it to export --since."""
    from cccatalog import render
    from cccatalog.gitmirror.git import Git
    from cccatalog.paths import require_output_file
    from cccatalog.transfer.site import describe_site

    if out is not None:
        require_output_file(out, setting="--out")
    render.manifest(
        describe_site(load(config), Git(redactor=invocation(ctx).redactor), environ=os.environ), out
    )


@app.command(
    epilog=example("cccatalog export -c config.yaml --since site.json --out update.tar --sign-key release")
)
def export(
    ctx: typer.Context,
    out: base.UpdateOut,
    config: base.ConfigOpt = None,
    since: base.Since = None,
    sign_key: base.SignKeyOpt = None,
    no_images: base.NoImages = False,
    as_json: base.JsonOpt = False,
) -> None:
    """Write one file that brings a site from its manifest to these mirrors, this catalog and its images."""
    from cccatalog import render
    from cccatalog.gitmirror.git import Git
    from cccatalog.paths import require_output_file
    from cccatalog.signing import check_sign_key
    from cccatalog.transfer.export import export_update

    inv = invocation(ctx)
    require_output_file(out, setting="--out")
    if sign_key is not None:
        check_sign_key(sign_key, environ=os.environ)
    with render.copy_progress("export", quiet=inv.quiet) as progress:
        result = export_update(
            load(config),
            Git(redactor=inv.redactor),
            out=out,
            since=since,
            sign_key=sign_key,
            environ=os.environ,
            images=not no_images,
            redactor=inv.redactor,
            progress=progress,
        )
    render.export_result(result, as_json=as_json, quiet=inv.quiet)


@app.command("import", epilog=example("cccatalog import update.tar -c config.yaml"))
def import_(
    ctx: typer.Context,
    update: base.UpdateFile,
    config: base.ConfigOpt = None,
    allowed_signers: base.AllowedSigners = None,
    signer: base.Signer = None,
    allow_unsigned: base.AllowUnsigned = False,
    allow_downgrade: base.AllowDowngrade = False,
    as_json: base.JsonOpt = False,
) -> None:
    """Apply an update to this site's mirrors and catalog while serve keeps serving."""
    from cccatalog import render
    from cccatalog.gitmirror.git import Git
    from cccatalog.transfer.archive import check_update_file
    from cccatalog.transfer.importer import import_update

    inv = invocation(ctx)
    check_update_file(update)
    with render.copy_progress("import", quiet=inv.quiet) as progress:
        result = import_update(
            load(config),
            Git(redactor=inv.redactor),
            update,
            allowed_signers=allowed_signers,
            signer=signer,
            allow_unsigned=allow_unsigned,
            environ=os.environ,
            progress=progress,
            allow_downgrade=allow_downgrade,
        )
    render.import_result(result, as_json=as_json, quiet=inv.quiet)
    _failed_if(result.failed)


@app.command(
    "resolve-latest",
    epilog=example("cccatalog resolve-latest ghcr.io/runwhen-contrib/rw-cli-codecollection --ref main"),
)
def resolve_latest(
    ctx: typer.Context,
    target: base.Target,
    ref: base.Ref = None,
    all_refs: base.AllRefs = False,
    as_json: base.JsonOpt = False,
    plain_http: base.PlainHttp = False,
    config: base.ConfigOpt = None,
) -> None:
    """Which image tag is really the newest build of a ref, and why (built_at and where it came from)."""
    from cccatalog import render
    from cccatalog.config import config_path_from_env
    from cccatalog.oci.targets import is_bare_name, newest_builds, resolve_target

    inv = invocation(ctx)
    if ref is not None and all_refs:
        raise UsageError("--ref and --all-refs cannot be used together (--all-refs resolves every ref)")
    if ref is not None and not ref.strip():
        raise UsageError("--ref: empty; give a branch or tag name (main), or leave --ref out")
    path = config_path_from_env(config, os.environ)
    cfg = load(config) if is_bare_name(target) and (config is not None or path.exists()) else None
    tgt = resolve_target(
        target, cfg, config_path=path, environ=os.environ, redactor=inv.redactor, plain_http=plain_http
    )
    found, requests = newest_builds(tgt, None if all_refs else [ref or tgt.default_ref], environ=os.environ)
    render.resolutions(tgt.repo.name, found, requests, as_json=as_json, verbose=inv.verbosity > 0)
