"""Running cccatalog as another user (`nobody`) when the checkout is private to its owner.

A clone in a home directory is mode 700: another uid can reach neither the source tree nor the
virtualenv inside it. `readable_install` copies what the unprivileged process needs into a
world-readable directory: the `cccatalog` package and every distribution its declared (non-extra)
requirements pull in, found through importlib.metadata from the running environment. The process then
runs with the base interpreter and that directory as its only `PYTHONPATH` entry. When even the base
interpreter is out of that user's reach, the tests that need it are skipped, saying so.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ReadableInstall:
    python: str  # an interpreter the user can run
    env: dict[str, str]  # what to add to its environment: PYTHONPATH to the copy

    def argv(self, *args: str) -> list[str]:
        return [self.python, "-s", "-m", "cccatalog", *args]


def _requirements(dist: importlib.metadata.Distribution) -> list[str]:
    """The names `dist` requires outside any extra."""
    found = []
    for req in dist.requires or ():
        if "extra ==" in req.replace('"', "").replace("'", "") or not (m := _NAME.match(req)):
            continue
        found.append(m.group(0))
    return found


def _closure(name: str) -> list[importlib.metadata.Distribution]:
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        key = re.sub(r"[-_.]+", "-", current).lower()
        if key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(current)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement of another platform or Python version
        seen[key] = dist
        todo.extend(_requirements(dist))
    return list(seen.values())


def _copy_distribution(dist: importlib.metadata.Distribution, dest: Path) -> None:
    for file in dist.files or ():
        if file.parts and file.parts[0] == "..":  # scripts in bin/: not needed to import
            continue
        source = Path(str(dist.locate_file(file)))
        if source.is_file() and "__pycache__" not in file.parts:
            target = dest / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _runs_as(user: str, argv: list[str], env: dict[str, str]) -> bool:
    probe = subprocess.run(
        ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *argv],
        env=env,
        cwd="/",
        capture_output=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0


@contextmanager
def readable_install(user: str = "nobody") -> Iterator[ReadableInstall | str]:
    """A ReadableInstall, or the reason `user` cannot run cccatalog on this machine."""
    home = Path(tempfile.mkdtemp(prefix="cccatalog-readable-"))
    try:
        home.chmod(0o755)
        site = home / "site"
        shutil.copytree(ROOT / "cccatalog", site / "cccatalog", ignore=shutil.ignore_patterns("__pycache__"))
        for dist in _closure("cccatalog"):
            if dist.metadata["Name"] != "cccatalog":
                _copy_distribution(dist, site)
        for dirpath, dirnames, filenames in os.walk(home):
            for name in dirnames:
                (Path(dirpath) / name).chmod(0o755)
            for name in filenames:
                (Path(dirpath) / name).chmod(0o644)
        python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        env = {"PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
        base = {"PATH": os.environ.get("PATH", os.defpath), **env}
        if not _runs_as(user, [python, "-c", "pass"], base):
            yield f"{user} cannot run the interpreter {python} (a private directory on its path)"
        elif not _runs_as(user, [python, "-s", "-m", "cccatalog", "--version"], base):
            yield f"{user} cannot import cccatalog from the readable copy in {site}"
        else:
            yield ReadableInstall(python, env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
