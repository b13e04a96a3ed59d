"""What a CodeCollection slug and an image repository path may be: the two grammars that paths,
URLs and registry calls are built from, with nothing else attached (any module may import them)."""

from __future__ import annotations

import re

SLUG_RULE = (
    "letters, digits, '.', '_', '-'; must start with a letter or digit; at most 200 characters; "
    "must not end in .git"
)
_SLUG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")

# One component of a repository path in distribution's grammar (lowercase, . _ - between runs).
REPOSITORY_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


def is_valid_slug(slug: str) -> bool:
    """True when `slug` is safe as `<data_dir>/<slug>.git` and in `/git/<slug>.git` URLs."""
    return _SLUG_RE.fullmatch(slug) is not None and not slug.endswith(".git")


def split_registry_host(reference: str) -> tuple[str | None, str]:
    """`ghcr.io/org/x` -> ("ghcr.io", "org/x"); `org/x` -> (None, "org/x") (Docker Hub). The first
    component is a host when it has a dot or a port, or is localhost, as docker and distribution read it."""
    first, sep, rest = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, reference
