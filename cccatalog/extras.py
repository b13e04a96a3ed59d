"""Which optional parts this cccatalog carries, and what to install for a missing one.

Only the PostgreSQL driver is optional today (the `postgres` extra: psycopg with its own libpq). The
single binary always carries it; `pip install cccatalog` does not. `--version` lists the parts, and a
config that needs a missing one is refused with one line naming what to install (config.py), before
anything is written.
"""

from __future__ import annotations

import importlib.util
import sys

POSTGRES_INSTALL = (
    "install the postgres extra (pip install 'cccatalog[postgres]') "
    "or use the single binary, which carries it"
)


def has_module(name: str) -> bool:
    """True when `name` can be imported; nothing is imported (start-up stays cheap)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module set to None
        return False


def has_postgres() -> bool:
    return has_module("psycopg")


def is_single_binary() -> bool:
    """True inside the PyInstaller binary (its bootloader sets sys.frozen)."""
    return bool(getattr(sys, "frozen", False))


def describe() -> list[str]:
    """`--version`'s lines after the first: how this cccatalog was built and which parts it has."""
    return [
        f"build: {'single binary' if is_single_binary() else 'python package'}",
        f"postgres: {'yes' if has_postgres() else 'no'}",
    ]
