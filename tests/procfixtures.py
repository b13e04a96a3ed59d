"""Watching the processes of one run: its tree, its process groups and sessions, read from /proc.

Other test runs share the machine, so nothing here looks at a process by name: a run's processes are
the descendants of the pid a test started, plus anything in the process groups and sessions those
created (a git helper whose git died is reparented, but keeps its group). A sampler thread records
every process it sees while the run lives, so a test can ask afterwards which of them survived, and
what each one's argv and environment held.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REAL_GIT = shutil.which("git") or "git"


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start: int  # clock ticks after boot: with the pid, names one process for good

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start


def read_proc(pid: int) -> Proc | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0], int(fields[19]))


def all_procs() -> list[Proc]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := read_proc(int(entry))) is not None:
            found.append(proc)
    return found


def run_members(root: int, groups: set[int], sessions: set[int]) -> list[Proc]:
    """Live descendants of `root` (itself included) and members of `groups`/`sessions`; zombies
    (ended, waiting to be reaped) do not count."""
    procs = all_procs()
    children: dict[int, list[Proc]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
    members = {p.pid: p for p in procs if p.pgid in groups or p.sid in sessions}
    todo = [p for p in procs if p.pid == root]
    while todo:
        proc = todo.pop()
        members[proc.pid] = proc
        todo.extend(children.get(proc.pid, []))
    return [p for p in members.values() if p.state != "Z"]


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def read_link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


@dataclass(frozen=True)
class Image:
    """One program a process ran (a process runs several: the fork of its parent, then each exec)."""

    exe: str
    cmdline: bytes
    environ: bytes


@dataclass
class Seen:
    """What the sampler saw of one process: each program it ran, with its argv and environment."""

    proc: Proc
    images: dict[tuple[str, bytes], Image] = field(default_factory=dict)


@dataclass
class RunWatch:
    """Everything seen of a run's processes; the run's groups and sessions (the test's own excepted)."""

    root: int
    groups: set[int] = field(default_factory=set)
    sessions: set[int] = field(default_factory=set)
    seen: dict[tuple[int, int], Seen] = field(default_factory=dict)
    samples: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sample(self) -> list[Proc]:
        mine_group, mine_session = os.getpgrp(), os.getsid(0)
        with self.lock:
            members = run_members(self.root, self.groups, self.sessions)
            for proc in members:
                if proc.pgid != mine_group:
                    self.groups.add(proc.pgid)
                if proc.sid != mine_session:
                    self.sessions.add(proc.sid)
                seen = self.seen.setdefault(proc.key, Seen(proc))
                exe = read_link(f"/proc/{proc.pid}/exe")
                cmdline = read_bytes(f"/proc/{proc.pid}/cmdline")
                if exe and cmdline and (exe, cmdline) not in seen.images:
                    environ = read_bytes(f"/proc/{proc.pid}/environ")
                    # read again: an exec between the reads would pair one program's argv with
                    # another's environment
                    if read_link(f"/proc/{proc.pid}/exe") == exe:
                        seen.images[exe, cmdline] = Image(exe, cmdline, environ)
            self.samples += 1
            return members

    def survivors(self) -> list[Proc]:
        """Processes of the run still alive (the root included, unless it was reaped)."""
        with self.lock:
            return run_members(self.root, self.groups, self.sessions)

    def describe(self, procs: list[Proc]) -> list[str]:
        return [
            f"{p.pid} pgid={p.pgid} sid={p.sid} {p.state} "
            + read_bytes(f"/proc/{p.pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
            for p in procs
        ]


@contextmanager
def watching(root: int, *, interval: float = 0.01) -> Iterator[RunWatch]:
    """Sample the run of `root` every `interval` seconds until the block ends."""
    watch = RunWatch(root)
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                watch.sample()
                stop.wait(interval)
        except BaseException as exc:  # a sampler that died silently would let every check pass
            failures.append(exc)

    thread = threading.Thread(target=loop, name="proc-sampler", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(5)
        watch.sample()
    if failures:
        raise AssertionError(f"the process sampler failed: {failures[0]!r}")


@dataclass(frozen=True)
class StandIn:
    """A `git` first on PATH that stops at one git subcommand until the test is done with it."""

    bin_dir: Path
    marker: Path

    def path_env(self) -> str:
        return f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}"

    def reached(self) -> bool:
        return self.marker.exists()

    def pid(self) -> int:
        return int(self.marker.read_text().split()[0])


def stopping_git(
    tmp_path: Path, subcommand: str, *, after: bool = False, only_in: str | None = None
) -> StandIn:
    """A stand-in `git` that runs the real one, except for `subcommand` (in a repo path containing
    `only_in`, when given): there it writes its pid to the marker and blocks forever, before running
    git or, with `after`, once git has done its work (so a kill lands between two git processes)."""
    bin_dir = tmp_path / "stand-in"
    bin_dir.mkdir(exist_ok=True)
    marker = tmp_path / f"reached-{subcommand}"
    where = f'case "$*" in *"{only_in}"*) ;; *) exec "{REAL_GIT}" "$@" ;; esac\n' if only_in else ""
    block = f'echo "$$ $*" > "{marker}.tmp" && mv "{marker}.tmp" "{marker}"\nexec sleep 600\n'
    run = f'"{REAL_GIT}" "$@" || exit $?\n' if after else ""
    script = (
        "#!/bin/sh\n"
        "skip=0 sub=\n"
        'for a in "$@"; do\n'
        '  if [ "$skip" = 1 ]; then skip=0; continue; fi\n'
        '  case "$a" in -C|-c|--git-dir) skip=1 ;; -*) ;; *) sub="$a"; break ;; esac\n'
        "done\n"
        f'[ "$sub" = "{subcommand}" ] || exec "{REAL_GIT}" "$@"\n'
        f"{where}{run}{block}"
    )
    path = bin_dir / "git"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return StandIn(bin_dir, marker)
