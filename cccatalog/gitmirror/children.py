"""The process groups of the git children this process started, and what ends them when it ends.

Every git runs in a session of its own, so that a timeout can kill its helpers (`git-remote-https`,
`fetch-pack`, `index-pack`, `pack-objects`) with one `killpg`. The same session puts them out of reach
of whatever ends us: Ctrl-C reaches only the terminal's foreground group, a SIGTERM or SIGKILL only
our pid. A git left running that way holds no repo lock and no deadline, and keeps writing to a
mirror the next run is about to maintain. So:

- every live group is registered here while its git runs;
- on SIGTERM or SIGINT (handlers the CLI installs with `end_children_with_process`) and at interpreter
  exit, every registered group gets SIGTERM: git removes its lock files and temporary packs on
  SIGTERM, and each helper in the group ends too; no new git starts after that;
- a SIGKILL runs no code of ours, so a small reaper process, started with the first child, holds the
  read end of a pipe whose only writer is this process. When we die the kernel closes our end, the
  reaper reads EOF and ends every group still registered (SIGTERM, then SIGKILL a second later).

`PR_SET_PDEATHSIG` is not used: it reaches only the direct child (a `git-remote-https` waiting on a
stalled upstream outlives a killed git until its low-speed limit, a minute), it fires when the *thread*
that forked exits rather than the process, and setting it needs a `preexec_fn`, which makes every
spawn a full `fork()` instead of `vfork()` (2 ms more per git process here, half the cost of a no-op
sync of one repo).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

# The reaper: remembers `+pgid` and forgets `-pgid` lines; at EOF (its writer died or exited) it ends
# every group it still remembers. POSIX sh and its builtins only, so it costs nothing while it waits.
_REAPER_SCRIPT = r"""
groups=' '
while IFS= read -r line; do
  case $line in
    +*) g=${line#+}
        case $groups in *" $g "*) ;; *) groups="$groups$g " ;; esac ;;
    -*) g=${line#-}
        case $groups in *" $g "*) groups="${groups%%" $g "*} ${groups#*" $g "}" ;; esac ;;
  esac
done
alive=
for g in $groups; do kill -s TERM -- "-$g" 2>/dev/null && alive="$alive $g"; done
[ -n "$alive" ] || exit 0
sleep 1
for g in $alive; do kill -s KILL -- "-$g" 2>/dev/null; done
exit 0
"""

_Handler = Callable[[int, FrameType | None], Any] | int | None


class ChildGroups:
    """Live child process groups (each child leads its own), ended with this process."""

    def __init__(self) -> None:
        self._live: set[int] = set()
        self._lock = threading.Lock()
        self._reaper_wanted = False
        self._reaper: IO[bytes] | None = None
        self.stopping: str | None = None  # why no new child may start (a signal's name, "exit")

    def add(self, pgid: int) -> None:
        self._live.add(pgid)
        self._tell(f"+{pgid}\n")

    def discard(self, pgid: int) -> None:
        self._live.discard(pgid)
        self._tell(f"-{pgid}\n")

    def live(self) -> tuple[int, ...]:
        return tuple(self._live)

    def terminate_all(self, reason: str) -> None:
        """SIGTERM every live group and refuse new children. Safe in a signal handler: no lock."""
        self.stopping = reason
        for pgid in tuple(self._live):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)

    def use_reaper(self) -> None:
        """End the registered groups even when this process is SIGKILLed (starts with the next child)."""
        self._reaper_wanted = True

    def _tell(self, line: str) -> None:
        if not self._reaper_wanted:
            return
        with self._lock:
            if self._reaper is None:
                # it starts knowing every group live now, this line's change included
                self._reaper = _start_reaper(self._live)
                if self._reaper is None:
                    self._reaper_wanted = False  # no /bin/sh: the signal handlers still work
                return
            try:
                # one small write: atomic on a pipe, and in order for one pgid (one thread adds and
                # discards it)
                self._reaper.write(line.encode())
                self._reaper.flush()
            except OSError:
                self._reaper_wanted = False  # the reaper is gone; the signal handlers still work


def _start_reaper(live: set[int]) -> IO[bytes] | None:
    """Start the reaper, told about `live`; returns the pipe to tell it more (None: it did not start)."""
    import subprocess

    try:
        proc = subprocess.Popen(
            # the script comes through the environment: `ps` shows one short line, not the script
            ["/bin/sh", "-c", 'eval "$REAPER_SCRIPT"', "cccatalog-reaper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # nothing of ours in its environment (tokens live there), no directory of ours pinned
            env={"PATH": os.defpath, "REAPER_SCRIPT": _REAPER_SCRIPT},
            cwd="/",
            # its own session: the Ctrl-C or group kill that ends us must leave it to do its job
            start_new_session=True,
        )
    except OSError:
        return None
    _REAPERS.append(proc)  # never waited for: it outlives us; kept so it is not reported as leaked
    stdin = proc.stdin
    assert stdin is not None
    try:
        stdin.write("".join(f"+{pgid}\n" for pgid in tuple(live)).encode())
        stdin.flush()
    except OSError:
        return None
    return stdin


_REAPERS: list[Any] = []

CHILDREN = ChildGroups()
"""The groups of every git this process starts (the default of `Git`)."""


def end_children_with_process(children: ChildGroups = CHILDREN) -> None:
    """Make `children` end with this process: on SIGTERM, SIGINT, at exit, and on SIGKILL (the
    reaper). For the process entry point only (signal handlers belong to the main thread)."""
    children.use_reaper()
    atexit.register(children.terminate_all, "exit")
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if previous == signal.SIG_IGN:
            continue  # whoever started us wants this signal ignored: so do our children
        signal.signal(signum, _handler(children, signum, previous))


def _handler(
    children: ChildGroups, signum: int, previous: _Handler
) -> Callable[[int, FrameType | None], None]:
    def handle(sig: int, frame: FrameType | None) -> None:
        children.terminate_all(signal.Signals(sig).name)
        if callable(previous):
            previous(sig, frame)  # SIGINT: Python's default raises KeyboardInterrupt
            return
        # the default action (for SIGTERM: end the process), now that the children are told
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return handle
