"""What every command shares: the Typer app, the per-invocation settings, the options several
commands take (with their environment fallbacks declared on them, so they are validated like
options), and the config loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cccatalog import envvars
from cccatalog.logs import LOG_FORMAT_VAR, LogFormat
from cccatalog.redact import Redactor

if TYPE_CHECKING:
    from cccatalog.config import Config


@dataclass
class Invocation:
    """Per-invocation settings, carried in the Typer context: how much to say, in which log format,
    and the redactor every message passes through."""

    verbosity: int = 0
    redactor: Redactor = field(default_factory=Redactor)
    log_format: LogFormat = LogFormat.TEXT

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0


def invocation(ctx: typer.Context) -> Invocation:
    return ctx.ensure_object(Invocation)


def example(*commands: str) -> str:
    """A help epilog. "\\b" keeps the formatter from re-wrapping it: examples are copied as printed."""
    return "\b\n" + "\n".join(f"Example: {command}" for command in commands)


app = typer.Typer(
    name="cccatalog",
    help="Air-gap git mirrors and image catalog for CodeCollections.\n\n"
    "A CodeCollection is a git repository of automation tasks plus the container images built from it.",
    add_completion=True,  # --install-completion, --show-completion; costs no import when unused
    pretty_exceptions_enable=False,  # errors are rendered by the runner; tokens live in locals
    rich_markup_mode=None,  # plain help: brackets in option help are text, and nothing is folded
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def load(config: Path | None) -> Config:
    """The config a command runs on; its warnings (keys the predecessor had, and the like) logged."""
    import logging

    from cccatalog.config import load_config
    from cccatalog.logs import LOGGER_NAME

    cfg = load_config(config)
    for warning in cfg.warnings:
        logging.getLogger(LOGGER_NAME).warning("%s: %s", cfg.path, warning)
    return cfg


# --- global options (the app's callback) ---------------------------------------------------------

Verbose = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        show_default=False,
        help="Say more: -v narrates each step, -vv also logs every git command and registry request, "
        "and shows tracebacks.",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr; no table.")]
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar=[LOG_FORMAT_VAR],
        show_envvar=True,
        case_sensitive=False,
        help="text, or json: one JSON object per line on stderr, for a log pipeline.",
    ),
]

# --- options several commands take ---------------------------------------------------------------

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=list(envvars.CONFIG),
        show_envvar=True,
        metavar="FILE",
        help="Config file (default: ./config.yaml).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout, nothing else.")]
JobsOpt = Annotated[
    int | None,
    typer.Option("--jobs", "-j", min=1, max=64, metavar="N", help="Repos at once [git.parallelism]."),
]
SignKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--sign-key",
        metavar="KEY",
        help="Sign the manifest with this SSH private key (ssh-keygen -Y sign; a .pub uses ssh-agent).",
    ),
]
AllowRuntimeSync = Annotated[
    bool,
    typer.Option(
        "--allow-runtime-sync", help="Reach upstreams and registries even though a runtime_sync guard is off."
    ),
]

# --- options of one command each, declared here so the commands read as a list ------------------

Only = Annotated[
    list[str] | None, typer.Option("--only", metavar="SLUG", help="Only this slug (repeatable).")
]
NoWait = Annotated[
    bool, typer.Option("--no-wait", help="Skip what another process is syncing instead of waiting.")
]
GitHalf = Annotated[bool, typer.Option("--git/--no-git", help="Sync the git mirrors.")]
ImagesHalf = Annotated[
    bool,
    typer.Option(
        "--images/--no-images", help="Poll the newest image builds (and copy them to destinations)."
    ),
]
Network = Annotated[
    bool, typer.Option("--network", help="Also ask each upstream and registry (read-only requests).")
]
MaxAge = Annotated[
    str | None,
    typer.Option(
        "--max-age",
        metavar="AGE",
        help="Oldest acceptable last sync: 90m, 2h, 1d [serve.freshness_budget_minutes].",
    ),
]
DemoDir = Annotated[
    Path, typer.Option("--dir", metavar="DIR", help="Where to create the demo (new, empty, or a demo's).")
]
DemoPort = Annotated[
    int, typer.Option("--port", min=0, max=65535, help="Port to serve on (a free one if it is taken).")
]
DemoServe = Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the mirrors after syncing.")]
Once = Annotated[
    bool, typer.Option("--once", help="Serve, clone once through the server with git, then exit.")
]
Host = Annotated[
    str | None,
    typer.Option(
        "--host",
        envvar=list(envvars.HOST),
        show_envvar=True,
        metavar="ADDR",
        help="Address to listen on [serve.host].",
    ),
]
Port = Annotated[
    int | None,
    typer.Option(
        "--port",
        envvar=list(envvars.PORT),
        show_envvar=True,
        min=0,
        max=65535,
        help="Port to listen on [serve.port].",
    ),
]
Get = Annotated[
    str | None,
    typer.Option("--get", metavar="PATH", help="Answer one API request in-process, print it, exit 0 or 1."),
]
GitMinutes = Annotated[
    int | None, typer.Option("--git-sync-minutes", min=1, metavar="N", help="Sync git every N minutes.")
]
CatalogMinutes = Annotated[
    int | None,
    typer.Option("--catalog-poll-minutes", min=1, metavar="N", help="Poll images every N minutes."),
]
Dest = Annotated[Path, typer.Option("--dest", metavar="DIR", help="Directory to bake the mirrors into.")]
TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        metavar="FILE",
        help="Read the git token from a file (it wins over the variable `git.auth.token_env` names).",
    ),
]
ManifestOut = Annotated[
    Path | None, typer.Option("--out", metavar="FILE", help="Write it to FILE (default: stdout).")
]
UpdateOut = Annotated[Path, typer.Option("--out", metavar="FILE", help="The update file to write (a tar).")]
Since = Annotated[
    Path | None,
    typer.Option("--since", metavar="FILE", help="The site's manifest; without it, a full export."),
]
NoImages = Annotated[
    bool,
    typer.Option(
        "--no-images",
        help="Carry no images: only name them in images.txt, for the tool the site moves images with.",
    ),
]
UpdateFile = Annotated[Path, typer.Argument(metavar="FILE", help="The update file `export` wrote.")]
AllowedSigners = Annotated[
    Path | None,
    typer.Option("--allowed-signers", metavar="FILE", help="SSH allowed signers [transfer.allowed_signers]."),
]
Signer = Annotated[
    str | None, typer.Option("--signer", metavar="PRINCIPAL", help="Who must have signed [transfer.signer].")
]
AllowUnsigned = Annotated[
    bool, typer.Option("--allow-unsigned", help="Import an update that carries no signature.")
]
AllowDowngrade = Annotated[
    bool,
    typer.Option(
        "--allow-downgrade",
        help="Import an update older than the last one imported, or one that moves a branch back.",
    ),
]
Target = Annotated[
    str,
    typer.Argument(
        metavar="IMAGE|SLUG", help="An image repository (ghcr.io/org/repo) or a slug from the config."
    ),
]
Ref = Annotated[
    str | None, typer.Option("--ref", metavar="REF", help="Ref to resolve [the slug's default_ref, or main].")
]
AllRefs = Annotated[bool, typer.Option("--all-refs", help="Resolve every ref in the repository.")]
PlainHttp = Annotated[bool, typer.Option("--plain-http", help="Allow plain HTTP to a non-loopback registry.")]
ProbeTarget = Annotated[
    str | None,
    typer.Argument(metavar="[URL]", help="What to GET [http://127.0.0.1:PORT/healthz].", show_default=False),
]
ProbePort = Annotated[
    int | None,
    typer.Option(
        "--port",
        envvar=list(envvars.PORT),
        show_envvar=True,
        min=1,
        max=65535,
        help="The port serve listens on, on this host [8080].",
    ),
]
ProbeTimeout = Annotated[
    float, typer.Option("--timeout", min=0.1, max=300, metavar="SECONDS", help="Give up after this long.")
]
