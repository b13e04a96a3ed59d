"""The one exception hierarchy of cccatalog, and the exit code each kind maps to.

Library code raises these; only `cccatalog.cli` catches them and turns them into an exit code and
one line of text. Messages must already be redacted and must say what to do.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CCCatalogError(Exception):
    """Base of every error cccatalog raises on purpose."""

    exit_code: int = EXIT_FAILED


class UsageError(CCCatalogError):
    """The command line or the environment asks for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The config file is missing or invalid; `problems` holds one `key.path: what is wrong` per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{source}: {len(self.problems)} config {noun}:\n{lines}")


class StateError(CCCatalogError):
    """The state database cannot be opened, migrated or written."""


class StateUnavailable(StateError):
    """The state database cannot be reached right now (a PostgreSQL server down or unreachable); it
    may come back without anything being changed here."""


class GitError(CCCatalogError):
    """A git command failed. `command` and `stderr` are redacted before they get here."""

    def __init__(self, message: str, *, command: str = "", stderr: str = "") -> None:
        self.command = command
        self.stderr = stderr
        super().__init__(message)


class LockBusy(CCCatalogError):
    """Another process holds a lock and we were told not to wait (or waited long enough)."""


class CredentialError(CCCatalogError):
    """An auth block names an environment variable or file that does not deliver credentials."""


class RegistryError(CCCatalogError):
    """A registry (or its token server) refused, failed or answered something unusable. `status` is
    the HTTP status when there was one; `codes`, the registry's own error codes (`MANIFEST_BLOB_UNKNOWN`)
    when it gave any."""

    def __init__(self, message: str, *, status: int | None = None, codes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes
