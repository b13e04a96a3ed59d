"""The table every config key is declared in: `setting(...)` on a field of a config dataclass gives
the key its default, its range or choices, its YAML name and its documentation, in one place.

Validation (`config.reader.read_settings`), the defaults (the dataclass's own) and the generated
reference in docs/configuration.md (`tools/docs.py`) are all derived from it; a test fails when the
reference and the table disagree.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, cast


def setting(
    default: Any = None,
    *,
    doc: str,
    key: str | None = None,
    shown: str | None = None,
    required: bool = False,
    range: tuple[float, float] | None = None,
) -> Any:
    """A config key's field. `key` is its YAML name when that differs from the field's ("" when the
    field is not a key of the file); `shown` is how its default reads when not as the value; `range`
    bounds a number (both ends included). A `Literal` type gives the key its choices."""
    metadata = {
        "doc": doc,
        "key": key,
        "shown": "required" if required and shown is None else shown,
        "range": range,
    }
    if required:
        return field(metadata=metadata)
    # A frozen dataclass (an AuthConfig) is hashable, so it may be a plain default, shared safely.
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of a config block, as the table declares it."""

    name: str  # the field's name
    key: str  # its YAML name
    type: Any  # the resolved annotation
    default: Any  # dataclasses.MISSING when required
    doc: str
    shown: str | None
    range: tuple[float, float] | None

    @property
    def choices(self) -> tuple[str, ...]:
        """The values a `Literal` key (or an optional one) accepts; () for any other type."""
        return literal_choices(self.type)

    @property
    def allowed(self) -> str:
        """What the reference shows as the allowed values: a range or the choices, else ""."""
        if self.range is not None:
            lo, hi = self.range
            return f"{lo:g} to {hi:g}"
        if self.choices:
            return ", ".join(f"`{c}`" for c in self.choices)
        return ""


def literal_choices(annotation: Any) -> tuple[str, ...]:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is Literal:
            return tuple(str(a) for a in typing.get_args(candidate))
    return ()


def settings(block: type[Any]) -> tuple[Setting, ...]:
    """The keys of a config dataclass in the order they are declared (fields that are not keys of the
    file, like a collection's `source`, left out)."""
    return _settings(cast(Hashable, block))


@functools.cache
def _settings(block: Any) -> tuple[Setting, ...]:
    hints = typing.get_type_hints(block)
    found = []
    for f in dataclasses.fields(block):
        key = f.metadata.get("key")
        if key == "" or "doc" not in f.metadata:
            continue
        found.append(
            Setting(
                name=f.name,
                key=key or f.name,
                type=hints[f.name],
                default=f.default,
                doc=f.metadata["doc"],
                shown=f.metadata.get("shown"),
                range=f.metadata.get("range"),
            )
        )
    return tuple(found)


def keys(block: type[Any]) -> tuple[str, ...]:
    """The YAML keys a block accepts at its own level (`options.x` keys belong to `options`)."""
    return tuple(dict.fromkeys(s.key.split(".")[0] for s in settings(block)))
