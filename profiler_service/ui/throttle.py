"""Failed sign-ins, limited per client address: after `DNAS_SERVICE_SIGN_IN_FAILURES` failures within a
minute, that address's sign-ins are refused (429, `Retry-After`) until the oldest failure is a minute old.

The refusal is decided in memory before the form is read or the database asked, so a flood of guesses costs a
dictionary lookup each. Tokens are 256-bit random, so guessing one is hopeless anyway; the limit is there so
that trying costs the service nothing and fills no log. Each worker counts its own failures (N workers allow
N times the limit): sharing the count would cost a database write per failure, the very cost being bounded.
"""

from __future__ import annotations

import math
import time
from collections import deque

WINDOW_S = 60.0
MAX_ADDRESSES = 10_000  # addresses tracked at once; past it the oldest are forgotten (memory stays bounded)


class SignInThrottle:
    """Per-address failure times within the last WINDOW_S."""

    def __init__(self, failures: int, window_s: float = WINDOW_S) -> None:
        self.failures = failures
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._seen.get(address)
        if times is None:
            return None
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._seen[address]
            return None
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until this address may try again, or None when it may now."""
        now = time.monotonic()
        times = self._recent(address, now)
        if times is None or len(times) < self.failures:
            return None
        return max(1, math.ceil(self.window_s - (now - times[0])))

    def failed(self, address: str) -> None:
        now = time.monotonic()
        times = self._recent(address, now)
        if times is None:
            if len(self._seen) >= MAX_ADDRESSES:
                del self._seen[next(iter(self._seen))]  # the address tracked longest
            times = self._seen[address] = deque(maxlen=self.failures)
        times.append(now)
