"""Deadlines for child processes: one thread kills the process group of any child past its time.

A `threading.Timer` per child costs ~0.1 ms to start and a thread while it waits; `communicate(timeout=)`
polls `waitpid` with growing sleeps (~0.6 ms a call). One shared thread per owner (a `Git`, the HTTP
backend) keeps every deadline in a heap, and exits when it has nothing to watch, so a long-lived
server keeps none while no child runs. Children must run in a session of their own
(`start_new_session=True`) so that the kill takes their helpers too.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import signal
import subprocess
import threading
import time
from typing import Any

IDLE_SECONDS = 10.0  # the thread exits after this long with nothing to watch


class Watchdog:
    """One thread that kills the process group of every watched child past its deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, threading.Event]] = []
        self._watched: dict[threading.Event, subprocess.Popen[Any]] = {}
        self._ids = itertools.count()
        self._running = False

    def watch(self, proc: subprocess.Popen[Any], timeout: float | None) -> threading.Event:
        """Kill `proc`'s group if it outlives `timeout`. The event returned is set when that happened;
        pass it to `forget` once `proc` has ended."""
        expired = threading.Event()
        if timeout is None:
            return expired
        with self._cond:
            self._watched[expired] = proc
            heapq.heappush(self._heap, (time.monotonic() + timeout, next(self._ids), expired))
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="process-deadlines", daemon=True).start()
            elif self._heap[0][2] is expired:
                self._cond.notify()  # a new earliest deadline
        return expired

    def forget(self, expired: threading.Event) -> None:
        with self._cond:
            self._watched.pop(expired, None)
            if len(self._heap) > 64 + 2 * len(self._watched):
                # finished runs leave their deadlines behind: drop them rather than wait them out
                self._heap = [entry for entry in self._heap if entry[2] in self._watched]
                heapq.heapify(self._heap)

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2] not in self._watched or self._heap[0][0] <= now):
                    _, _, expired = heapq.heappop(self._heap)
                    proc = self._watched.pop(expired, None)
                    if proc is not None:
                        expired.set()
                        kill_group(proc)
                if not self._heap:
                    if not self._cond.wait(IDLE_SECONDS) and not self._heap:
                        self._running = False
                        return
                    continue
                self._cond.wait(self._heap[0][0] - now)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the child's process group, unless the child was reaped (its pid may be reused)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
