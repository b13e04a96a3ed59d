"""The command line: the only part of cccatalog that parses arguments, prints for people and exits.

`base` holds what the commands share (the Typer app, per-invocation settings, the options), `commands`
the commands themselves (each parses, loads the config, calls one library function, renders), and
`runner` the entry point that turns every error into one line and an exit code (0 ok, 1 something
failed, 2 usage or config). Rendering is `cccatalog.render`'s, built on the results' `to_json()`.
"""

from __future__ import annotations

from cccatalog.cli import commands as _commands  # registers the commands on the app
from cccatalog.cli.base import app
from cccatalog.cli.runner import hoist_global_flags, main, run

__all__ = ["app", "hoist_global_flags", "main", "run"]

del _commands
