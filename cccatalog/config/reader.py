"""Reading one block of the raw config: typed getters that record every problem with its key path
and fall back to the default, and `read_settings`, which reads all the plain keys of a block from
the table of its dataclass (type, default, range, choices). The only code that touches raw YAML
values besides the YAML loader itself."""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from cccatalog.config.settings import Setting, settings

_T = TypeVar("_T")


@dataclass
class Ctx:
    """What one load collects: where relative paths start, every problem and every warning."""

    base_dir: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Reader:
    """One mapping of the raw config at key path `where`. Getters record problems and return defaults."""

    def __init__(self, ctx: Ctx, where: str, data: dict[Any, object] | None = None) -> None:
        self.ctx, self.where, self.data = ctx, where, data or {}

    @classmethod
    def of(cls, ctx: Ctx, where: str, value: object) -> Reader | None:
        if value is None:
            return cls(ctx, where)
        if not isinstance(value, dict):
            ctx.problems.append(f"{where}: expected a mapping, got {describe(value)}")
            return None
        return cls(ctx, where, value)

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def problem(self, name: str | None, message: str) -> None:
        self.ctx.problems.append(f"{self.key(name) if name else self.where}: {message}")

    def warn(self, name: str, message: str) -> None:
        self.ctx.warnings.append(f"{self.key(name)}: {message}")

    def check_keys(self, allowed: Sequence[str], legacy: Mapping[str, str] | None = None) -> None:
        for key in self.data:
            name = str(key)
            if name in allowed:
                continue
            if legacy and name in legacy:
                self.warn(name, f"ignored — {legacy[name]}")
                continue
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            self.problem(name, f"unknown key (expected one of: {', '.join(sorted(allowed))}){hint}")

    def child(self, name: str) -> Reader:
        return Reader.of(self.ctx, self.key(name), self.data.get(name)) or Reader(self.ctx, self.key(name))

    def items(self, name: str) -> list[tuple[str, object]]:
        """(key path, value) of each entry of the list at `name`."""
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(name, f"expected a list, got {describe(value)}")
            return []
        return [(f"{self.key(name)}[{i}]", item) for i, item in enumerate(value)]

    def _value(self, name: str, default: object, ok: bool, expected: str, required: bool = False) -> object:
        value = self.data.get(name)
        if value is None:
            if required:
                self.problem(name, f"is required ({expected})")
            return default
        if ok:
            return value
        self.problem(name, f"expected {expected}, got {describe(value)}")
        return default

    def str_(self, name: str, default: _T, *, required: bool = False) -> str | _T:
        value = self.data.get(name)
        ok = isinstance(value, str) and bool(value.strip())
        return cast("str | _T", self._value(name, default, ok, "a non-empty string", required))

    def bool_(self, name: str, default: bool) -> bool:
        ok = isinstance(self.data.get(name), bool)
        return cast(bool, self._value(name, default, ok, "true or false"))

    def int_(self, name: str, default: _T, lo: int, hi: int) -> int | _T:
        value = self.data.get(name)
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        return cast("int | _T", self._value(name, default, ok, f"an integer from {lo} to {hi}"))

    def number(self, name: str, default: _T, lo: float, hi: float) -> float | _T:
        value = self.data.get(name)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi
        found = self._value(name, default, ok, f"a number of seconds from {lo:g} to {hi:g}")
        return cast("float | _T", float(found) if isinstance(found, int | float) else found)

    def choice(self, name: str, default: _T, choices: Sequence[str], *, required: bool = False) -> str | _T:
        ok = self.data.get(name) in choices
        expected = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"
        return cast("str | _T", self._value(name, default, ok, expected, required))

    def path_(self, name: str, default: _T) -> Path | _T:
        value = self.str_(name, None)
        return default if value is None else self.ctx.base_dir / value

    def setting(self, s: Setting) -> object:
        """One key read by what the table says of it: its type, default, range or choices. A required
        key (no default) is its block's own code to read."""
        if s.default is MISSING:
            raise TypeError(f"{self.key(s.key)}: a required key is read by its block's own code")
        default = s.default
        kinds = {s.type} if not hasattr(s.type, "__args__") else {*s.type.__args__} - {type(None)}
        if s.choices:
            return self.choice(s.key, default, s.choices)
        if kinds == {bool}:
            return self.bool_(s.key, default)
        if kinds == {int}:
            lo, hi = _range(s)
            return self.int_(s.key, default, int(lo), int(hi))
        if kinds == {float}:
            lo, hi = _range(s)
            return self.number(s.key, default, lo, hi)
        if kinds == {Path}:
            return self.path_(s.key, default)
        if kinds == {str}:
            return self.str_(s.key, default)
        raise TypeError(f"{self.key(s.key)}: a {s.type} is read by its block's own code")


def read_settings(
    r: Reader, block: type[Any], *, skip: Collection[str] = (), prefix: str = ""
) -> dict[str, Any]:
    """Every key of `block` (a config dataclass) at `r`'s level, read by its table, by field name.
    The fields in `skip` are the caller's to read; `prefix` reads a nested mapping's keys instead
    (`options.` for a source's `options.timeout`)."""
    return {
        s.name: r.setting(dataclasses.replace(s, key=s.key.removeprefix(prefix)))
        for s in settings(block)
        if s.name not in skip and s.key.startswith(prefix) and "." not in s.key.removeprefix(prefix)
    }


def keys_under(block: type[Any], prefix: str) -> tuple[str, ...]:
    """The keys of a nested mapping of `block` (`options` of a source)."""
    return tuple(s.key.removeprefix(prefix) for s in settings(block) if s.key.startswith(prefix))


def _range(s: Setting) -> tuple[float, float]:
    if s.range is None:
        raise TypeError(f"{s.key}: a number needs a range in its setting")
    return s.range


def quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def describe(value: object) -> str:
    """A value as messages show it: short strings quoted, scalars as YAML writes them, containers by kind."""
    if isinstance(value, str):
        return quote(value)
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else "a value"
