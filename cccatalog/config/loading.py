"""From a file (or already-loaded YAML) to a `Config`: the top-level keys, the blocks in order, and
every problem of every block raised at once as one `ConfigError`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cccatalog import envvars
from cccatalog.config import mirroring, sections
from cccatalog.config.model import Config
from cccatalog.config.reader import Ctx, Reader, describe
from cccatalog.config.state import state
from cccatalog.errors import ConfigError

_TOP_KEYS = ("destinations", "git", "images", "scheduler", "serve", "sources", "state", "transfer")
_LEGACY_TOP = {
    "storage": "cccatalog keeps its state in an SQLite file or a PostgreSQL database (state.path, state.url)",
    "catalog_api": "not used by cccatalog (serve takes its options on the command line)",
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (it would silently override the first)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def config_path_from_env(explicit: Path | None, environ: Mapping[str, str]) -> Path:
    """`explicit`, else $CCCATALOG_CONFIG, else $CC_CATALOG_CONFIG_FILE, else ./config.yaml."""
    if explicit is not None:
        return explicit
    value = envvars.first(environ, envvars.CONFIG)
    return Path(value) if value else Path("config.yaml")


def load_config(path: Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file, or raise ConfigError listing every problem.

    `environ` (default: os.environ) supplies the config path fallbacks and the state path overrides.
    """
    env = os.environ if environ is None else environ
    path = config_path_from_env(path, env)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = f"set --config or {envvars.CONFIG[0]}"
        raise ConfigError(str(path), [f"file not found ({hint})"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror or type(exc).__name__}"]) from None
    try:
        data = yaml.load(raw, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [_yaml_problem(exc)]) from None
    except RecursionError:
        # PyYAML composes nested nodes recursively; no config is nested more than a few levels.
        raise ConfigError(str(path), ["nested too deeply to be a config file"]) from None
    return parse_config(data, path=path, environ=env)


def parse_config(data: object, *, path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Validate already-loaded YAML. Pure: reads no environment beyond `environ` (None = empty).

    Relative paths in the file are taken against the directory of `path`. A YAML null anywhere means
    "not set" (defaults; an empty list for lists).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level: expected a mapping of config keys, got {describe(data)}"])
    ctx = Ctx(base_dir=path.absolute().parent)
    top = Reader(ctx, "", data)
    top.check_keys(_TOP_KEYS, _LEGACY_TOP)
    scheduler = sections.scheduler(top.child("scheduler"))
    sources, slugs = sections.sources(top)
    git = sections.git(top.child("git"), slugs)
    state_config = state(top.child("state"), git.data_dir, environ or {})
    serve = sections.serve(top.child("serve"))
    images = sections.images(top.child("images"))
    transfer = sections.transfer(top.child("transfer"))
    destinations = mirroring.destinations(top, slugs)
    if ctx.problems:
        raise ConfigError(str(path), ctx.problems)
    return Config(
        path=path.absolute(),
        git=git,
        scheduler=scheduler,
        state=state_config,
        serve=serve,
        images=images,
        transfer=transfer,
        sources=sources,
        destinations=destinations,
        warnings=tuple(ctx.warnings),
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # Only the problem and its position: str(exc) quotes the offending line, which may hold a secret.
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not readable as text ({exc.reason}) at byte {exc.position}"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "cannot parse"
        if mark is not None:
            return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"
        return f"invalid YAML: {problem}"
    return f"invalid YAML ({type(exc).__name__})"
