"""Generate the parts of docs/ that the code already says, so the two cannot drift.

    python tools/docs.py           # rewrite the generated blocks in docs/
    python tools/docs.py --check   # exit 1, naming the file, when a block is out of date (a test runs this)

- docs/commands.md: every command's `--help`, as the CLI prints it;
- docs/configuration.md: every config key with its default, range or choices and meaning, from the
  table of `cccatalog.config.settings.setting`, and every environment variable, from
  `cccatalog.envvars`.

A generated block sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->`; the text around
it is written by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cccatalog import config as cfg  # noqa: E402 - after the path is set for a bare checkout
from cccatalog import envvars  # noqa: E402

COMMANDS = ROOT / "docs" / "commands.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"


# --- commands --------------------------------------------------------------------------------------


def _help(argv: list[str]) -> str:
    from cccatalog.cli import run

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run([*argv, "--help"])
    assert code == 0, f"{argv} --help exited {code}"
    return out.getvalue().rstrip() + "\n"


def command_names() -> list[str]:
    import typer

    from cccatalog.cli import app

    group: Any = typer.main.get_command(app)
    return list(group.commands)


def commands_block() -> str:
    parts = ["```text\n$ cccatalog --help\n" + _help([]) + "```\n"]
    for name in command_names():
        parts.append(f"\n### `cccatalog {name}`\n\n```text\n$ cccatalog {name} --help\n{_help([name])}```\n")
    return "".join(parts)


# --- configuration ---------------------------------------------------------------------------------

_BLOCKS: list[tuple[str, type[Any]]] = [
    ("git", cfg.GitConfig),
    ("images", cfg.ImagesConfig),
    ("scheduler", cfg.SchedulerConfig),
    ("serve", cfg.ServeConfig),
    ("state", cfg.StateConfig),
    ("transfer", cfg.TransferConfig),
    ("sources[]", cfg.Source),
    ("destinations[]", cfg.Destination),
]
_NESTED = {cfg.AuthConfig, cfg.CodeCollection, cfg.DestinationAuth, cfg.MirrorFilter}


def _shown(s: cfg.Setting) -> str:
    if s.shown:
        return s.shown
    value = s.default
    if value is None or value == () or value is dataclasses.MISSING:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def config_rows() -> Iterator[tuple[str, str, str]]:
    """(key, default, meaning) of every key, in the order of the dataclasses."""
    for key, default, _allowed, meaning in config_table():
        yield key, default, meaning


def config_table() -> Iterator[tuple[str, str, str, str]]:
    """(key, default, allowed values, meaning) of every key, in the order of the dataclasses."""
    for prefix, block in _BLOCKS:
        yield from _rows(prefix, block)


def _rows(prefix: str, block: type[Any]) -> Iterator[tuple[str, str, str, str]]:
    for s in cfg.settings(block):
        name = f"{prefix}.{s.key}"
        yield name, _shown(s), s.allowed, s.doc
        inner = _inner(s)
        if inner is cfg.AuthConfig and prefix == "git":
            yield from _rows(name, inner)
        elif inner is cfg.CodeCollection:
            yield from _rows(f"{name}[]", inner)
        elif inner in (cfg.DestinationAuth, cfg.MirrorFilter):
            yield from _rows(name, inner)


def _inner(s: cfg.Setting) -> type[Any] | None:
    return next((t for t in _NESTED if t is s.type or t in typing.get_args(s.type)), None)


def configuration_block() -> str:
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    lines += [
        f"| `{key}` | {default} | {allowed} | {meaning} |"
        for key, default, allowed, meaning in config_table()
    ]
    return "\n".join(lines) + "\n"


def environment_block() -> str:
    lines = ["| variable | the predecessor's | meaning |", "|---|---|---|"]
    for names, meaning in envvars.DOCS.items():
        ours = ", ".join(f"`{n}`" for n in names if not n.startswith("CC_CATALOG_"))
        theirs = ", ".join(f"`{n}`" for n in names if n.startswith("CC_CATALOG_")) or "—"
        lines.append(f"| {ours or '—'} | {theirs} | {meaning} |")
    return "\n".join(lines) + "\n"


# --- the files -------------------------------------------------------------------------------------

GENERATED: dict[Path, dict[str, Callable[[], str]]] = {
    COMMANDS: {"commands": commands_block},
    CONFIGURATION: {"configuration": configuration_block, "environment": environment_block},
}


def render(path: Path) -> str:
    """`path` with each of its generated blocks made anew."""
    text = path.read_text(encoding="utf-8")
    for name, make in GENERATED[path].items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n)(.*?)(<!-- end: {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{path}: no '<!-- generated: {name} -->' ... '<!-- end: {name} -->' block")
        block = make()

        def replace(m: re.Match[str], block: str = block) -> str:
            return m.group(1) + block + m.group(3)

        text = pattern.sub(replace, text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a generated block is out of date")
    args = parser.parse_args()
    os.environ["COLUMNS"] = "100"  # help text is wrapped to the terminal: the same width everywhere
    stale = []
    for path in GENERATED:
        fresh = render(path)
        if fresh != path.read_text(encoding="utf-8"):
            if args.check:
                stale.append(path)
            else:
                path.write_text(fresh, encoding="utf-8")
                print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"{path.relative_to(ROOT)} is out of date: run python tools/docs.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
