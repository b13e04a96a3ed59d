"""The reaper: one thread that cuts off connections whose client sends a request too slowly.

A socket timeout bounds each read, not the whole request: a client sending one byte every few seconds
would hold a worker (and, for a body, a spool file) for as long as it liked. Two rules, checked a few
times a second for every armed socket:

- a deadline: the request head (or the wait for it on a keep-alive connection) must be in within the
  idle timeout; a body within a ceiling however fast it goes;
- a minimum rate, for bodies: the first byte within the idle timeout, then at least `MIN_BODY_RATE`
  bytes/s averaged over each window (`body_window`). A 64 MiB body at 1 MiB/s passes; one byte every
  5 s is cut off one window after it starts.

The reader counts what it has read into a `BodyMeter` (an attribute update, no syscall); the reaper
compares. A socket past its rule is shut down, so the blocked read returns EOF.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field

MIN_BODY_RATE = 4096  # bytes/s: 32 kbit/s, below any link a git client really uses
MAX_BODY_WINDOW = 10.0  # seconds over which the rate is averaged (shorter when the idle timeout is)


def body_window(idle_timeout: float) -> float:
    return min(float(idle_timeout), MAX_BODY_WINDOW)


class BodyMeter:
    """Bytes of a request body received so far; `cut` is set when the reaper gave up on it."""

    __slots__ = ("cut", "received")

    def __init__(self) -> None:
        self.received = 0
        self.cut = False


@dataclass(slots=True)
class _Watch:
    sock: socket.socket
    deadline: float
    meter: BodyMeter | None = None
    first_byte_by: float = 0.0
    window: float = 0.0
    window_start: float | None = field(default=None)  # None until the first byte is seen
    window_bytes: int = 0

    def keeping_up(self, now: float, min_rate: float) -> bool:
        meter = self.meter
        if meter is None:
            return True
        received = meter.received
        if self.window_start is None:
            if received:
                self.window_start, self.window_bytes = now, received
                return True
            return now < self.first_byte_by
        if now - self.window_start < self.window:
            return True
        if received - self.window_bytes < min_rate * self.window:
            return False
        self.window_start, self.window_bytes = now, received
        return True


class Reaper:
    """Shuts down sockets past their deadline or, for a body, below the minimum rate."""

    def __init__(self, interval: float = 0.25, *, min_body_rate: float = MIN_BODY_RATE) -> None:
        self._items: dict[int, _Watch] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        self.min_body_rate = min_body_rate
        threading.Thread(target=self._loop, name="reaper", daemon=True).start()

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._items[id(sock)] = _Watch(sock, time.monotonic() + seconds)

    def arm_body(
        self,
        sock: socket.socket,
        *,
        first_byte: float,
        window: float,
        ceiling: float,
        now: float | None = None,
    ) -> BodyMeter:
        """Watch a body: the first byte within `first_byte` s, the rate per `window`, all by `ceiling` s."""
        start = time.monotonic() if now is None else now
        meter = BodyMeter()
        watch = _Watch(sock, start + ceiling, meter, first_byte_by=start + first_byte, window=window)
        with self._lock:
            self._items[id(sock)] = watch
        return meter

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._items.pop(id(sock), None)

    def stop(self) -> None:
        self._stop.set()

    def sweep(self, now: float) -> int:
        """Shut down every socket past its rule at `now`; returns how many."""
        with self._lock:
            late = [
                key
                for key, watch in self._items.items()
                if watch.deadline <= now or not watch.keeping_up(now, self.min_body_rate)
            ]
            watches = [self._items.pop(key) for key in late]
        for watch in watches:
            if watch.meter is not None:
                watch.meter.cut = True
            with suppress(OSError):
                watch.sock.shutdown(socket.SHUT_RDWR)
        return len(watches)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sweep(time.monotonic())
