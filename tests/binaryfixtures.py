"""The single binary every `binary` test runs: built once per session, the way the release image
builds it (examples/Dockerfile's build stage, which runs tools/build_binary.sh), or taken from
$CCCATALOG_BINARY when CI has built it already (`python3 tests/dockerfile.py DIR` before the tests).

The binary is copied into a world-readable directory outside pytest's private tmp tree, so that the
image's non-root uid (10001) can run it in tests/test_release_image.py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dockerfile import clean_copy, run_build_stage

BINARY_VAR = "CCCATALOG_BINARY"


@dataclass(frozen=True)
class Binary:
    path: Path  # the one-file binary, in a 0755 directory of its own
    built: Path  # where it was built (or the path CI gave)

    @property
    def bindir(self) -> Path:
        return self.path.parent


@contextmanager
def session_binary() -> Iterator[Binary]:
    given = os.environ.get(BINARY_VAR)
    home = Path(tempfile.mkdtemp(prefix="cccatalog-binary-"))
    try:
        home.chmod(0o755)
        if given:
            built = Path(given)
            if not built.is_file():
                pytest.fail(f"{BINARY_VAR}={given}: no such file")
        else:
            if importlib.util.find_spec("PyInstaller") is None:
                pytest.skip(
                    "PyInstaller is not installed (pip install pyinstaller) - the binary is not built"
                )
            src = clean_copy(home / "src")
            # The Dockerfile's own build commands; with BUILD_PYTHON the script builds with this
            # interpreter (the test extra has PyInstaller and psycopg) instead of installing from PyPI.
            built = run_build_stage(src, extra_env={"BUILD_PYTHON": sys.executable})
        bindir = home / "bin"
        bindir.mkdir(mode=0o755)
        path = Path(shutil.copy2(built, bindir / "cccatalog"))
        path.chmod(0o755)
        yield Binary(path, built)
    finally:
        shutil.rmtree(home, ignore_errors=True)
