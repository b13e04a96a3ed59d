"""Wrong admin tokens, counted per client: after `MAX_FAILURES` within `WINDOW_SECONDS`, that client's
admin requests get 429 + Retry-After before any token is compared, until the oldest of those failures
is older than the window. At most 10 guesses a minute per address, instead of thousands a second.

And counted over all clients: after `MAX_FAILURES_ALL` within the window, from however many
addresses (200 loopback addresses, a botnet, a /48 of IPv6), every admin request gets 429 the same
way. A spray of guesses can then lock the operator out for at most a minute; it cannot make more than
100 guesses a minute, instead of 2,000 in under two seconds.

Clients are keyed by peer address (an IPv6 client by its /64, which one host usually holds whole).
Behind a reverse proxy every client shares the proxy's address: a guesser there also locks the
operator out for a minute, which beats an unlimited guess rate. Successes are never counted.
Memory is bounded: at most `MAX_CLIENTS` addresses are remembered (about 3 MiB), the one whose last
failure is oldest dropped first, so a spray of addresses cannot grow it.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
MAX_CLIENTS = 4096
MAX_FAILURES_ALL = 100


def client_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimiter:
    """Thread-safe sliding window of failure times per client, LRU-bounded in clients."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        max_clients: int = MAX_CLIENTS,
        max_failures_all: int = MAX_FAILURES_ALL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.max_failures_all = max_failures_all
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=max_failures_all)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None when it may now."""
        key = client_key(client)
        with self._lock:
            times = self._failures.get(key)
            if times is None or len(times) < self.max_failures:
                return None
            wait = self.window - (self._clock() - times[0])
        return max(1, math.ceil(wait)) if wait > 0 else None

    def retry_after_all(self) -> int | None:
        """Seconds until anyone may try again when all clients together failed too often, or None."""
        with self._lock:
            if len(self._all) < self.max_failures_all:
                return None
            wait = self.window - (self._clock() - self._all[0])
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, client: str) -> None:
        key = client_key(client)
        now = self._clock()
        with self._lock:
            times = self._failures.pop(key, None)
            if times is None:
                times = deque(maxlen=self.max_failures)
            times.append(now)
            self._all.append(now)
            self._failures[key] = times
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
