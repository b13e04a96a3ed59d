"""Admission of git backends: a few slots, and a bounded queue beyond them that is fair across clients.

A fleet of runner pods starts together and fetches at once; git clients do not retry a 503, so a wall
at `max_concurrent_upload_packs` failed half of a 16-pod burst. Requests past the slots now wait, the
shape of Gitaly's concurrency limiter:

- at most `max_queued` requests wait; a request beyond that, or one that waited `max_wait` seconds, is
  refused (`Refused`: 503 + Retry-After);
- a freed slot goes to the clients in turn (round-robin by client address), each client's own requests
  in arrival order, so one client's burst of 20 cannot starve another client's one. When the queue is
  full, a newcomer from a client with fewer queued requests than the busiest client takes the place of
  that client's newest request (which is refused instead): a burst cannot lock others out of the
  queue either;
- a waiter whose client went away (`gone()`, checked a few times a second) leaves the queue and never
  takes a slot.

Behind a proxy every request has the proxy's address and the order is first come, first served; a
forwarded-for header is not trusted for this, since any client could set it.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

RETRY_AFTER_SECONDS = 2
_POLL_SECONDS = 0.2  # how often a waiter checks that its client is still there
_GONE_EVENTS = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


class Refused(Exception):
    """No slot: the queue is full or the wait ran out. Answer 503 with `retry_after`."""

    def __init__(self, reason: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ClientLeft(Exception):
    """The client went away while its request was queued; nothing is owed to it."""


@dataclass(eq=False, slots=True)
class _Waiter:
    client: str
    event: threading.Event = field(default_factory=threading.Event)
    granted: bool = False
    refused: str | None = None


class Slot:
    """An admission slot; `release()` once (further calls do nothing). A context manager too."""

    def __init__(self, owner: Admission) -> None:
        self._owner: Admission | None = owner

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """`slots` backends at once; up to `max_queued` waiting, each at most `max_wait` seconds."""

    def __init__(
        self, slots: int, *, max_queued: int, max_wait: float, poll_interval: float = _POLL_SECONDS
    ) -> None:
        self.slots = slots
        self.max_queued = max_queued
        self.max_wait = max_wait
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._running = 0
        self._queued = 0
        # client -> its waiters in arrival order; the dict's order is the round-robin turn
        self._turns: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self.refused = 0  # counters for logs and tests
        self.left = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return self._queued

    def acquire(self, client: str, *, gone: Callable[[], bool] | None = None) -> Slot:
        """A slot now, or after a fair wait. Raises `Refused` (answer 503) or `ClientLeft`."""
        with self._lock:
            if self._running < self.slots and not self._queued:
                self._running += 1
                return Slot(self)
            waiter = self._enqueue(client)
        deadline = time.monotonic() + self.max_wait
        while True:
            remaining = deadline - time.monotonic()
            if waiter.event.wait(max(0.0, min(self.poll_interval, remaining))):
                break
            left = gone is not None and gone()
            if left or time.monotonic() >= deadline:
                with self._lock:
                    if waiter.granted or waiter.refused:
                        break  # decided while we looked away
                    self._remove(waiter)
                    if left:
                        self.left += 1
                        raise ClientLeft()
                    self.refused += 1
                    raise Refused(f"waited {self.max_wait:g}s for a free git slot; retry shortly")
        if waiter.refused:
            raise Refused(waiter.refused)
        return Slot(self)

    def _enqueue(self, client: str) -> _Waiter:
        """Queue a waiter for `client` (lock held), or raise `Refused` when there is no room for it."""
        waiter = _Waiter(client)
        if self._queued >= self.max_queued:
            busiest, line = max(self._turns.items(), key=lambda item: len(item[1]), default=("", deque()))
            if len(line) <= len(self._turns.get(client, ())) + 1:
                self.refused += 1
                raise Refused("too many git requests queued; retry shortly")
            pushed = line.pop()  # the busiest client's newest request makes room for another client
            self._queued -= 1
            if not line:
                del self._turns[busiest]
            pushed.refused = "too many git requests queued from this client; retry shortly"
            self.refused += 1
            pushed.event.set()
        self._turns.setdefault(client, deque()).append(waiter)
        self._queued += 1
        return waiter

    def _remove(self, waiter: _Waiter) -> None:
        line = self._turns.get(waiter.client)
        if line is not None and waiter in line:
            line.remove(waiter)
            self._queued -= 1
            if not line:
                del self._turns[waiter.client]

    def _release(self) -> None:
        with self._lock:
            if not self._turns:
                self._running -= 1
                return
            client, line = next(iter(self._turns.items()))
            waiter = line.popleft()
            self._queued -= 1
            del self._turns[client]
            if line:
                self._turns[client] = line  # to the back of the turn order
            waiter.granted = True  # the slot passes straight to it: `_running` is unchanged
            waiter.event.set()


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer closed (or half-closed) the connection, without waiting or consuming input.

    A request is read whole before it queues, so input now is either the end of the stream (the
    client left) or a pipelined next request (it is still there). A half-close counts as leaving, as
    it does for nginx: HTTP clients close, they do not half-close and wait.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN | _GONE_EVENTS)
    events = poller.poll(0)
    if not events:
        return False
    revents = events[0][1]
    if revents & _GONE_EVENTS:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
