"""Running the command line: the one place that exits.

Every CCCatalogError becomes one `error:` line and its exit code here (0 ok, 1 something failed,
2 usage or config); a traceback is shown only with -vv. The parser's own usage errors are said the
same way, error first. The global flags (-v, -q, --log-format) work before or after the command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import typer

from cccatalog import envvars
from cccatalog.cli import commands  # noqa: F401 - registers the commands on the app
from cccatalog.cli.base import Invocation, app
from cccatalog.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CCCatalogError
from cccatalog.logs import LOG_FORMAT_VAR, LogFormat, setup_logging

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


def option_missing_its_value(group: Any, argv: Sequence[str]) -> str | None:
    """`sync -c --json`: an option that takes a value followed straight by another option of the same
    command. The parser would take `--json` as the file name and the error would name the wrong
    thing; say which option lacks its value instead."""
    args = list(argv)
    index = next((i for i, a in enumerate(args) if a in group.commands), None)
    if index is None:
        return None
    params = group.commands[args[index]].params
    names = {opt for param in params for opt in param.opts + param.secondary_opts} | _GLOBAL_FLAGS
    names |= {"-h", "--help"}
    takes_value = {
        opt
        for param in params
        if not getattr(param, "is_flag", False) and not getattr(param, "count", False)
        for opt in param.opts
        if opt.startswith("-")
    }
    for i in range(index + 1, len(args) - 1):
        if args[i] == "--":
            break
        if args[i] in takes_value and args[i + 1] in names:
            return f"Option '{args[i]}' requires a value, but it is followed by the option '{args[i + 1]}'."
    return None


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
    if (missing := option_missing_its_value(command, args)) is not None:
        from cccatalog import render

        name = next(a for a in args if a in getattr(command, "commands", {}))
        render.error(missing, details=[f"Try 'cccatalog {name} -h' for help."])
        return EXIT_USAGE
    try:
        result = command.main(args=args, prog_name="cccatalog", standalone_mode=False, obj=inv)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return 130
    except typer.TyperException as exc:  # usage errors of the option parser: the error first
        return _usage_error(exc)
    except CCCatalogError as exc:
        _print_error(inv, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a filesystem or network fault nothing below handled: one line, no traceback
        _print_error(inv, exc)
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK


def _usage_error(exc: typer.TyperException) -> int:
    from cccatalog import render

    usage_ctx = getattr(exc, "ctx", None)  # a usage error carries the context of its command
    details = []
    if usage_ctx is not None:
        details = [usage_ctx.get_usage(), f"Try '{usage_ctx.command_path} -h' for help."]
    render.error(_message(exc), details=details)
    return int(exc.exit_code)


def _message(exc: typer.TyperException) -> str:
    """The parser's message; for a bad option value, the option and, when the value came from the
    environment, the one variable that held it (the parser would list every fallback name)."""
    if not isinstance(exc, typer.BadParameter) or exc.param is None or exc.ctx is None:
        return exc.format_message()
    param, ctx = exc.param, exc.ctx
    hint = " / ".join(f"'{opt}'" for opt in param.opts) or f"'{param.human_readable_name}'"
    source = ctx.get_parameter_source(param.name) if param.name else None
    if source is not None and source is type(source).ENVIRONMENT and param.envvar:
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
        if used := envvars.first_name(os.environ, names):
            hint += f" (from the environment variable {used})"
    return f"Invalid value for {hint}: {exc.message}"


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
