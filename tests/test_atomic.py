"""Replacing a file: a reader, a failed write or a kill sees the old content or the new, whole."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cccatalog.atomic import replacing, write_atomic


def test_the_new_content_replaces_the_old_and_any_uid_may_read_it(tmp_path: Path) -> None:
    tmp_path = tmp_path / "dir"
    tmp_path.mkdir()
    target = tmp_path / "manifest.json"
    target.write_text("old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    tmp_path = tmp_path / "dir"
    tmp_path.mkdir()
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def write_half() -> None:
        with replacing(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_half()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_missing_directory_is_an_error_about_it_and_nothing_is_created(tmp_path: Path) -> None:
    tmp_path = tmp_path / "dir"
    tmp_path.mkdir()
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nowhere" / "manifest.json", b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_writer_killed_midway_leaves_the_old_file_whole(tmp_path: Path) -> None:
    tmp_path = tmp_path / "dir"
    tmp_path.mkdir()
    target = tmp_path / "manifest.json"
    target.write_text("old")
    writer = (
        "import os, sys, pathlib\n"
        "from cccatalog.atomic import replacing\n"
        "with replacing(pathlib.Path(sys.argv[1])) as f:\n"
        "    f.write(b'half')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", writer, str(target)], check=False)
    assert result.returncode == -9
    assert target.read_text() == "old"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "manifest.json"]
    assert all(name.startswith(".manifest.json-") and name.endswith(".tmp") for name in leftovers)
    assert os.stat(target).st_size == 3
