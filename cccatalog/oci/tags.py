"""Canonical image tags and semver, as pure functions over strings.

A canonical tag is `<ref>-<cc_sha>-<rt_sha>`: the CodeCollection commit and the runtime commit, in
lowercase hex (7 to 40 digits). It is parsed from the right, because refs themselves may contain `-`
(`fix-login-abc1234-def5678` is ref `fix-login`). Tags that do not match (`latest`, `main`, dates)
are not builds and are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_TAG_RE = re.compile(r"(?P<ref>.+)-(?P<cc>[0-9a-f]{7,40})-(?P<rt>[0-9a-f]{7,40})")
_DIGEST_RE = re.compile(r"sha256[-:_][0-9a-f]{64}(\.\w+)?|[0-9a-f]{64}")
_SEMVER_RE = re.compile(
    r"v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)(?:\.(?P<patch>0|[1-9]\d*))?"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?"
)


@dataclass(frozen=True, slots=True)
class CanonicalTag:
    tag: str
    ref: str
    commit: str
    rt_revision: str

    @property
    def ref_type(self) -> str:
        """`tag` for release-like refs (semver), `branch` for the rest (PR builds included)."""
        return "tag" if parse_semver(self.ref) is not None else "branch"


def parse_tag(tag: str) -> CanonicalTag | None:
    if is_digest_shaped(tag):
        return None
    m = _TAG_RE.fullmatch(tag)
    if m is None:
        return None
    return CanonicalTag(tag, m["ref"], m["cc"], m["rt"])


def is_digest_shaped(tag: str) -> bool:
    """Tags that name a digest (cosign signatures, attestations, referrers fallbacks) are not builds."""
    return _DIGEST_RE.fullmatch(tag) is not None


def group_by_ref(tags: Iterable[str | None]) -> dict[str, list[CanonicalTag]]:
    """Canonical tags grouped by ref, each group sorted by tag; `null` entries and non-builds skipped."""
    groups: dict[str, list[CanonicalTag]] = {}
    for tag in tags:
        if not isinstance(tag, str):
            continue
        parsed = parse_tag(tag)
        if parsed is not None:
            groups.setdefault(parsed.ref, []).append(parsed)
    for group in groups.values():
        group.sort(key=lambda c: c.tag)
    return dict(sorted(groups.items()))


SemverKey = tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]


def parse_semver(ref: str) -> SemverKey | None:
    """A sort key where a pre-release ranks below its release: v1.2.0-rc1 < v1.2.0 < v1.2.1."""
    m = _SEMVER_RE.fullmatch(ref)
    if m is None:
        return None
    pre = m["pre"]
    # release = 1 sorts after any pre-release (0) of the same version, as semver 2.0 section 11 says
    identifiers = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")) if pre else ()
    return (int(m["major"]), int(m["minor"]), int(m["patch"] or 0), 0 if pre else 1, identifiers)


def is_prerelease(ref: str) -> bool:
    key = parse_semver(ref)
    return key is not None and key[3] == 0


def catalog_prerelease(ref: str, ref_type: str, *, is_stable: bool) -> bool:
    """The catalog's `is_prerelease`: the predecessor's rule (every row that is neither the stable
    one nor a release tag, so branch builds are pre-releases), plus release candidates, which the
    predecessor counted as releases."""
    return not (is_stable or ref_type == "tag") or is_prerelease(ref)


def stable_ref(refs: Iterable[str]) -> str | None:
    """The highest release (not pre-release) semver ref, or None when there is none."""
    releases = [(key, ref) for ref in refs if (key := parse_semver(ref)) is not None and key[3] == 1]
    return max(releases)[1] if releases else None
