"""examples/Dockerfile read as data, and its build stage run on this machine without docker.

The parser (stages, instructions, flags, exec-form words) serves tests/test_examples.py. `run_build_stage`
runs the release image's build stage from the Dockerfile's own text: its ARG defaults become the
environment, and every RUN after `COPY . .` runs in a copy of the source tree that stands in for
`WORKDIR /src` (the RUNs before it install Debian packages, which `tools/install-test-deps` gives this
machine). CI builds the binary this way before the tests (`python3 tests/dockerfile.py DIR`), so the
binary every test runs is the one the image would carry. Standard library only: CI runs it with the
system python3, outside any virtualenv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "examples" / "Dockerfile"
BUILD_TIMEOUT_SECONDS = 900


@dataclass
class Instruction:
    keyword: str
    args: str

    def flags(self) -> dict[str, str]:
        """`--name=value` options before the arguments (COPY --from, RUN --mount, ...)."""
        found: dict[str, str] = {}
        for word in self.args.split():
            if not word.startswith("--"):
                break
            name, _, value = word[2:].partition("=")
            found[name] = value
        return found

    def words(self) -> list[str]:
        """The arguments without the leading `--` options; JSON (exec) form decoded."""
        rest = self.args
        while rest.startswith("--"):
            rest = rest.split(None, 1)[1] if " " in rest else ""
        if rest.startswith("["):
            decoded: list[str] = json.loads(rest)
            return decoded
        return rest.split()


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[str], list[Stage]]:
    """(parser directives, stages). Continuation lines are joined; comment lines are dropped."""
    lines = text.splitlines()
    directives = []
    for line in lines:
        if not (m := re.fullmatch(r"#\s*(\w+)=(\S+)\s*", line)):
            break
        directives.append(f"{m[1].lower()}={m[2]}")
    stages: list[Stage] = []
    pending = ""
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip() + " "
            continue
        keyword, _, args = pending.partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            words = instruction.words()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
    assert not pending, "the Dockerfile ends in a continuation line"
    return directives, stages


def stages() -> dict[str, Stage]:
    return {s.name: s for s in parse_dockerfile(DOCKERFILE.read_text())[1]}


def build_commands(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """(ARG defaults, the shell commands of the RUNs after `COPY . .`) of a stage."""
    args: dict[str, str] = {}
    commands: list[str] = []
    copied = False
    for instruction in stage.instructions:
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name] = default
        elif instruction.keyword == "COPY" and instruction.words() == [".", "."]:
            copied = True
        elif instruction.keyword == "RUN" and copied:
            assert not instruction.args.startswith("["), "exec-form RUN: not expected in the build stage"
            commands.append(instruction.args)
    assert copied, f"stage {stage.name} copies no source tree"
    return args, commands


def clean_copy(dest: Path) -> Path:
    """The files git tracks (and new ones it does not ignore), as a clean clone of this tree would hold,
    copied to `dest`; nothing the developer built or cached comes along. Outside a git checkout (an
    unpacked source archive) the tree is copied without what a build or a run leaves behind."""
    if not (ROOT / ".git").exists():
        leftovers = ("build", "dist", ".venv", "*.egg-info", "__pycache__", ".*_cache", "cccatalog-demo")
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*leftovers), dirs_exist_ok=True)
        return dest
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def run_build_stage(src: Path, *, extra_env: dict[str, str] | None = None) -> Path:
    """Run the build stage's commands in `src` (a copy of the source tree); the binary it made."""
    args, commands = build_commands(stages()["build"])
    env = {**os.environ, **args, **(extra_env or {})}
    for name in ("CCCATALOG_ONEDIR", "CCCATALOG_RUNTIME_TMPDIR", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(name, None)
    for command in commands:
        out = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"RUN {command} failed ({out.returncode}):\n{out.stdout[-4000:]}{out.stderr[-4000:]}"
            )
    binary = src / "dist" / "cccatalog"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise RuntimeError(f"the build stage made no binary at {binary}")
    return binary


if __name__ == "__main__":
    # python3 tests/dockerfile.py DIR: copy this tree to DIR (new), build there, print the binary's path
    target = Path(sys.argv[1])
    target.mkdir(parents=True)
    print(run_build_stage(clean_copy(target)))
