"""Where the state lives: the environment's variables (cccatalog's and the predecessor's), then
`state.url`, then `state.path`, then a file under `git.data_dir`. A database URL's password is
never echoed, and never accepted from the config file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cccatalog import envvars
from cccatalog.config.model import StateConfig
from cccatalog.config.reader import Reader
from cccatalog.config.settings import keys
from cccatalog.config.state_urls import postgres_url, sqlite_path
from cccatalog.extras import POSTGRES_INSTALL, has_postgres
from cccatalog.redact import url_password


def state(r: Reader, data_dir: Path, environ: Mapping[str, str]) -> StateConfig:
    """$CCCATALOG_STATE_URL, else $CCCATALOG_STATE_FILE, else $CC_CATALOG_DB_URL (sqlite or
    postgresql), else state.url, else state.path, else a file under git.data_dir."""
    r.check_keys(keys(StateConfig))
    from_yaml = r.path_("path", None)
    yaml_url = r.str_("url", None)
    local = from_yaml or data_dir / ".cccatalog" / "state.sqlite3"
    if yaml_url is not None and from_yaml is not None:
        r.problem(None, "set state.url (a database) or state.path (a file), not both")
    if value := envvars.first(environ, envvars.STATE_URL):
        found = _state_url(r, envvars.STATE_URL[0], value, local)
        if found is not None:
            return found
    (state_file,) = envvars.STATE_FILE
    if value := environ.get(state_file):
        return StateConfig(Path.cwd() / value, state_file)
    (db_url_name,) = envvars.DB_URL
    if db_url := environ.get(db_url_name):
        if (file := sqlite_path(db_url)) is not None:
            return StateConfig(Path.cwd() / file, db_url_name)
        if (pg_url := postgres_url(db_url)) is not None:
            return _postgres_state(r, db_url_name, pg_url, local)
        # Never echo the URL: it may carry a database password.
        r.ctx.warnings.append(
            f"{db_url_name}: ignored — only sqlite:///<path> and postgresql://… URLs can be used; "
            f"set {state_file} or state.path instead"
        )
    if yaml_url is not None:
        if url_password(yaml_url):
            r.problem(
                "url",
                "embeds a password; secrets do not belong in the config file: put the URL in "
                f"{envvars.STATE_URL[0]} (from a secret), or the password in PGPASSWORD",
            )
        elif (found := _state_url(r, r.key("url"), yaml_url, local)) is not None:
            return found
    if from_yaml is not None:
        return StateConfig(from_yaml)
    return StateConfig(local, "git.data_dir (the state file is under it)")


def _state_url(r: Reader, setting: str, url: str, local: Path) -> StateConfig | None:
    """A state URL of cccatalog's own (an environment variable or state.url): postgresql:// or
    sqlite:///; anything else is a problem (its value never shown: it may carry a password)."""
    if (file := sqlite_path(url)) is not None:
        # a variable's relative path is the caller's working directory's, the file's its directory's
        base = Path.cwd() if setting.isupper() else r.ctx.base_dir
        return StateConfig(base / file, setting)
    if (pg_url := postgres_url(url)) is not None:
        return _postgres_state(r, setting, pg_url, local)
    r.ctx.problems.append(
        f"{setting}: expected a postgresql://user@host:port/database or sqlite:///<path> URL"
    )
    return None


def _postgres_state(r: Reader, setting: str, pg_url: str, local: Path) -> StateConfig:
    """A PostgreSQL state, refused here (before anything is written) when the driver is missing."""
    if not has_postgres():
        r.ctx.problems.append(
            f"{setting}: a postgresql:// state needs the PostgreSQL driver (psycopg), which this "
            f"cccatalog does not carry: {POSTGRES_INSTALL}"
        )
    return StateConfig(local, setting, pg_url)
