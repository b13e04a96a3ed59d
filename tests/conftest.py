"""Shared fixtures: isolated git environment, upstream repos, config files, real registries."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.binaryfixtures import Binary, session_binary
from tests.gitfixtures import GIT_ENV, Upstream
from tests.pgfixtures import BINDIR as PG_BINDIR
from tests.pgfixtures import PgServer, running_postgres
from tests.registry import RunningRegistry, running_registry
from tests.unprivileged import ReadableInstall, readable_install


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer or CI git config leaks into tests; HOME points at an empty directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    for key in (
        *("CCCATALOG_CONFIG", "CC_CATALOG_CONFIG_FILE", "CCCATALOG_STATE_FILE", "CC_CATALOG_DB_URL"),
        *("CCCATALOG_STATE_URL", "PGPASSWORD", "PGHOST", "PGDATABASE", "PGUSER"),
    ):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def make_upstream(tmp_path: Path) -> Callable[[str], Upstream]:
    def make(name: str) -> Upstream:
        return Upstream(tmp_path / "upstreams" / name)

    return make


MakeConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> MakeConfig:
    """Write a config with one source listing `repos` (slug -> git_url) and return its path."""

    def write(repos: dict[str, str], *, git_extra: str = "", name: str = "config.yaml") -> Path:
        entries = "".join(f"      - slug: {slug}\n        git_url: {url}\n" for slug, url in repos.items())
        text = (
            "git:\n"
            "  enabled: true\n"
            "  data_dir: mirrors\n"
            "  lock_timeout_seconds: 5\n"
            f"{git_extra}"
            "sources:\n"
            "  - name: test\n"
            "    type: static\n"
            "    codecollections:\n"
            f"{entries}"
        )
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def registry_anon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """distribution 2.8 without auth, shared by the session: use unique repository names per test."""
    with running_registry(tmp_path_factory.mktemp("registry-anon"), "anonymous") as registry:
        yield registry


@pytest.fixture(scope="session")
def registry_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """distribution 2.8 with htpasswd Basic auth (`registry.username`/`registry.password`)."""
    with running_registry(tmp_path_factory.mktemp("registry-basic"), "basic") as registry:
        yield registry


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """distribution 2.8 with token auth; `registry.token_server` records every token request."""
    with running_registry(tmp_path_factory.mktemp("registry-token"), "token") as registry:
        yield registry


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL 15 server of the session (tests/pgfixtures.py); each test takes its own database."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL (password included) of a new, empty database on the session's server."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture(scope="session")
def readable_cccatalog() -> Iterator[ReadableInstall | str]:
    """cccatalog copied where `nobody` can run it, or why it cannot (tests/unprivileged.py)."""
    with readable_install("nobody") as found:
        yield found


@pytest.fixture(scope="session")
def binary() -> Iterator[Binary]:
    """The single binary, built once per session as the release image builds it (tests/binaryfixtures.py)."""
    with session_binary() as built:
        yield built


_POSTGRES_FIXTURES = frozenset({"pg_server", "pg_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Benchmarks, the binary build and the browser are slow too: `-m "not slow"` leaves them out.
    A test on the session's PostgreSQL is marked `postgres`; where the server binaries are absent it
    is skipped with the reason (CI, where they must be, fails instead of skipping)."""
    missing = None
    if not (PG_BINDIR / "postgres").exists() and not os.environ.get("CI"):
        missing = f"no PostgreSQL server in {PG_BINDIR} (tools/install-test-deps installs postgresql-15)"
    for item in items:
        if any(item.get_closest_marker(name) for name in ("bench", "binary", "browser")):
            item.add_marker(pytest.mark.slow)
        if _POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
        if missing and item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.skip(reason=missing))
