"""In-process limiter: GCRA per level, checked and taken with no await in between (so one atomic step on
the event loop). Exact for one process; use Redis (`storage.redis`) to share limits between replicas."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from proxy.limits import EPS, WINDOW, Decision, Level, LevelState, remaining

_GC_EVERY = 10_000


class MemoryLimiter:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        # level key -> [requests TAT, tokens TAT, inflight]: one dict lookup per level on the hot path
        self._rows: dict[str, list] = {}
        self._calls = 0
        self.stats: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def acquire(self, levels: Sequence[Level], tokens: int, high: bool, lease: str) -> Decision:
        return self.acquire_now(levels, tokens, high)

    def _row(self, key: str) -> list:
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = [0.0, 0.0, 0]
        return row

    def acquire_now(self, levels: Sequence[Level], tokens: int, high: bool) -> Decision:
        """The whole check-then-take, synchronous: nothing else can run between the check and the take."""
        now = self.clock()
        self._calls += 1
        if self._calls % _GC_EVERY == 0:
            self._gc(now)
        worst, worst_lv, reason = 0.0, None, ""
        plan = []
        for lv in levels:
            row = self._row(lv.key)
            cap = WINDOW if high else WINDOW * (1.0 - lv.reserve)
            base_r = new_r = base_t = new_t = 0.0
            if lv.rpm:
                base_r = row[0] if row[0] > now else now
                new_r = base_r + WINDOW / lv.rpm
                wait = new_r - now - cap
                if wait > EPS and wait > worst:
                    worst, worst_lv, reason = wait, lv, "requests"
            if lv.tpm:
                cost = tokens * WINDOW / lv.tpm
                if cost > cap + EPS:
                    return Decision(False, denied=lv, reason="too_large", retry_after=0.0)
                base_t = row[1] if row[1] > now else now
                new_t = base_t + cost
                wait = new_t - now - cap
                if wait > EPS and wait > worst:
                    worst, worst_lv, reason = wait, lv, "tokens"
            if lv.concurrency and worst_lv is None and row[2] + 1 > math.floor(lv.concurrency * cap / WINDOW + EPS):
                worst, worst_lv, reason = 1.0, lv, "concurrency"
            plan.append((lv, row, base_r, new_r, base_t, new_t))
        take = worst_lv is None
        states = []
        for lv, row, base_r, new_r, base_t, new_t in plan:
            st = LevelState(lv)
            if lv.rpm:
                if take:
                    base_r = row[0] = new_r
                st.remaining_requests, st.reset_requests = remaining(base_r, now, lv.rpm), base_r - now
            if lv.tpm:
                if take:
                    base_t = row[1] = new_t
                st.remaining_tokens, st.reset_tokens = remaining(base_t, now, lv.tpm), base_t - now
            if lv.concurrency:
                if take:
                    row[2] += 1
                st.inflight = row[2]
            states.append(st)
        if not take:
            return Decision(False, states, denied=worst_lv, reason=reason, retry_after=worst)
        return Decision(True, states)

    async def settle(self, levels: Sequence[Level], lease: str, reserved: int, actual: int) -> None:
        delta = actual - reserved
        for lv in levels:
            row = self._rows.get(lv.key)
            if row is None:
                continue
            if lv.tpm and delta:
                row[1] += delta * WINDOW / lv.tpm
            if lv.concurrency and row[2] > 0:
                row[2] -= 1

    async def peek(self, levels: Sequence[Level]) -> list[LevelState]:
        now = self.clock()
        out = []
        for lv in levels:
            row = self._rows.get(lv.key) or [0.0, 0.0, 0]
            st = LevelState(lv)
            if lv.rpm:
                tat = max(row[0], now)
                st.remaining_requests, st.reset_requests = remaining(tat, now, lv.rpm), tat - now
            if lv.tpm:
                tat = max(row[1], now)
                st.remaining_tokens, st.reset_tokens = remaining(tat, now, lv.tpm), tat - now
            if lv.concurrency:
                st.inflight = row[2]
            out.append(st)
        return out

    def _gc(self, now: float) -> None:
        """Full buckets with nothing in flight carry no information: drop them so state does not grow."""
        for k in [k for k, row in self._rows.items() if row[0] <= now and row[1] <= now and row[2] == 0]:
            del self._rows[k]
