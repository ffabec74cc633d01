"""Auth failures throttled per client address: past the limit a minute, a bad key gets 429, not 401.

Only failures count, so a good key from the same address is never refused. A fixed one-minute window
per address, in this process; the table is swept when it grows, so an attack from many addresses costs
bounded memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

WINDOW = 60.0
MAX_ADDRESSES = 100_000


class AuthThrottle:
    __slots__ = ("_clock", "_seen", "limit")

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = per_minute
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}     # address -> (window start, failures in it)

    def failed(self, address: str | None) -> int | None:
        """Count one failure; the seconds to wait (for Retry-After) once the address is past its limit."""
        if self.limit <= 0:
            return None
        now = self._clock()
        addr = address or "-"
        start, n = self._seen.get(addr, (now, 0))
        if now - start >= WINDOW:
            start, n = now, 0
        elif addr not in self._seen and len(self._seen) >= MAX_ADDRESSES:
            self._sweep(now)
        self._seen[addr] = (start, n + 1)
        if n + 1 <= self.limit:
            return None
        return max(1, math.ceil(start + WINDOW - now))

    def _sweep(self, now: float) -> None:
        self._seen = {a: v for a, v in self._seen.items() if now - v[0] < WINDOW}
        if len(self._seen) >= MAX_ADDRESSES:        # all live: forget the oldest half
            keep = sorted(self._seen.items(), key=lambda kv: kv[1][0])[len(self._seen) // 2:]
            self._seen = dict(keep)
