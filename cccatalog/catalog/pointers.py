"""Which row `latest` and `stable` point at among a collection's refs: a pure function, applied when the
refs are written and kept beside them (the store's per-collection pointers), so that listing the
catalog reads one row per collection instead of ranking every collection's refs on every request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from cccatalog.oci.tags import stable_ref


class RefRow(Protocol):
    @property
    def ref(self) -> str: ...

    @property
    def image_tag(self) -> str | None: ...

    @property
    def is_active(self) -> bool: ...

    @property
    def is_latest(self) -> bool: ...

    @property
    def is_stable(self) -> bool: ...


R = TypeVar("R", bound=RefRow)


def pointers(refs: Sequence[R]) -> tuple[R | None, R | None]:
    """(latest, stable) among active refs with an image. Stable is the row flagged when the refs were
    written; rows written before that flag existed have none, and then stable is the highest release
    semver ref, falling back to latest as the predecessor did."""
    with_image = [r for r in refs if r.is_active and r.image_tag]
    latest = next((r for r in with_image if r.is_latest), None)
    flagged = next((r for r in with_image if r.is_stable), None)
    if flagged is not None:
        return latest, flagged
    stable_name = stable_ref(r.ref for r in with_image)
    stable = next((r for r in with_image if r.ref == stable_name), None) if stable_name else latest
    return latest, stable


def has_image(refs: Sequence[RefRow]) -> bool:
    """What `only_with_image` asks of a collection: an active ref with an image."""
    return any(r.is_active and r.image_tag for r in refs)
