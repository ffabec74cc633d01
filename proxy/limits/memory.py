"""In-process limiter: GCRA per level, checked and taken with no await in between (so one atomic step on
the event loop). Exact for one process; use Redis (`storage.redis`) to share limits between replicas."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from proxy.limits import EPS, WINDOW, Decision, Level, LevelState, gcra, remaining

_GC_EVERY = 10_000


class MemoryLimiter:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._req: dict[str, float] = {}      # level key -> theoretical arrival time (requests)
        self._tok: dict[str, float] = {}      # level key -> theoretical arrival time (tokens)
        self._inflight: dict[str, int] = {}
        self._calls = 0
        self.stats: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def acquire(self, levels: Sequence[Level], tokens: int, high: bool, lease: str) -> Decision:
        return self.acquire_now(levels, tokens, high)

    def acquire_now(self, levels: Sequence[Level], tokens: int, high: bool) -> Decision:
        """The whole check-then-take, synchronous: nothing else can run between the check and the take."""
        now = self.clock()
        self._calls += 1
        if self._calls % _GC_EVERY == 0:
            self._gc(now)
        worst, worst_lv, reason = 0.0, None, ""
        plan: list[tuple[Level, float, float]] = []
        for lv in levels:
            share = 1.0 if high else 1.0 - lv.reserve
            new_r = new_t = 0.0
            if lv.rpm:
                new_r, wait = gcra(self._req.get(lv.key, 0.0), now, 1, lv.rpm, share)
                if wait > worst:
                    worst, worst_lv, reason = wait, lv, "requests"
            if lv.tpm:
                if tokens * WINDOW / lv.tpm > WINDOW * share + EPS:
                    return Decision(False, denied=lv, reason="too_large", retry_after=0.0)
                new_t, wait = gcra(self._tok.get(lv.key, 0.0), now, tokens, lv.tpm, share)
                if wait > worst:
                    worst, worst_lv, reason = wait, lv, "tokens"
            if lv.concurrency and self._inflight.get(lv.key, 0) + 1 > math.floor(lv.concurrency * share + EPS):
                if worst_lv is None:
                    worst, worst_lv, reason = 1.0, lv, "concurrency"
            plan.append((lv, new_r, new_t))
        if worst_lv is not None:
            return Decision(False, denied=worst_lv, reason=reason, retry_after=worst)
        states = []
        for lv, new_r, new_t in plan:
            st = LevelState(lv)
            if lv.rpm:
                self._req[lv.key] = new_r
                st.remaining_requests, st.reset_requests = remaining(new_r, now, lv.rpm), new_r - now
            if lv.tpm:
                self._tok[lv.key] = new_t
                st.remaining_tokens, st.reset_tokens = remaining(new_t, now, lv.tpm), new_t - now
            if lv.concurrency:
                st.inflight = self._inflight[lv.key] = self._inflight.get(lv.key, 0) + 1
            states.append(st)
        return Decision(True, states)

    async def settle(self, levels: Sequence[Level], lease: str, reserved: int, actual: int) -> None:
        delta = actual - reserved
        for lv in levels:
            if lv.tpm and delta:
                tat = self._tok.get(lv.key)
                if tat is not None:
                    self._tok[lv.key] = tat + delta * WINDOW / lv.tpm
            if lv.concurrency:
                n = self._inflight.get(lv.key, 0) - 1
                if n > 0:
                    self._inflight[lv.key] = n
                else:
                    self._inflight.pop(lv.key, None)

    async def peek(self, levels: Sequence[Level]) -> list[LevelState]:
        now = self.clock()
        out = []
        for lv in levels:
            st = LevelState(lv)
            if lv.rpm:
                tat = max(self._req.get(lv.key, 0.0), now)
                st.remaining_requests, st.reset_requests = remaining(tat, now, lv.rpm), tat - now
            if lv.tpm:
                tat = max(self._tok.get(lv.key, 0.0), now)
                st.remaining_tokens, st.reset_tokens = remaining(tat, now, lv.tpm), tat - now
            if lv.concurrency:
                st.inflight = self._inflight.get(lv.key, 0)
            out.append(st)
        return out

    def _gc(self, now: float) -> None:
        """Full buckets carry no information: drop them so per-key state does not grow forever."""
        for d in (self._req, self._tok):
            for k in [k for k, tat in d.items() if tat <= now]:
                del d[k]
