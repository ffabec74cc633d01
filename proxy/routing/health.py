"""Per-target state: circuit breaker, cooldowns, in-flight count, latency EWMA; provider health probes.

A target is (provider, upstream model). After `failures` consecutive failures its circuit opens for
`cooldown` seconds; then one request is let through as a half-open probe: success closes it, failure
re-opens it. A provider's 429 with Retry-After opens it for that long without counting as a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from proxy.config import BreakerConfig, Target

log = logging.getLogger("proxy.routing")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(slots=True)
class TargetState:
    key: str
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False
    inflight: int = 0
    ewma_ms: float = 0.0
    successes: int = 0
    errors: int = 0
    last_error: str = ""
    throttled: bool = False     # open because of a provider's 429 (Retry-After), not failures

    def state(self, now: float) -> str:
        if self.open_until == 0.0:
            return CLOSED
        return OPEN if now < self.open_until else HALF_OPEN


class Health:
    def __init__(self, breaker: BreakerConfig) -> None:
        self.breaker = breaker
        self.targets: dict[str, TargetState] = {}
        self.providers: dict[str, dict] = {}      # name -> {"healthy": bool, "checked_at": ts, "error": str}

    def of(self, target: Target) -> TargetState:
        key = f"{target.provider}/{target.model}"
        st = self.targets.get(key)
        if st is None:
            st = self.targets[key] = TargetState(key)
        return st

    def available(self, target: Target, now: float) -> bool:
        """May a request go to this target now? A half-open target admits one probe at a time."""
        prov = self.providers.get(target.provider)
        if prov is not None and not prov["healthy"]:
            return False
        st = self.of(target)
        s = st.state(now)
        if s == CLOSED:
            return True
        if s == HALF_OPEN and (st.throttled or not st.probing):   # a 429 cooldown ends for everyone
            return True
        return False

    def begin(self, st: TargetState, now: float) -> None:
        st.inflight += 1
        if st.state(now) == HALF_OPEN:
            st.probing = True

    def end(self, st: TargetState) -> None:
        st.inflight -= 1

    def success(self, st: TargetState, latency_ms: float) -> None:
        st.successes += 1
        if st.open_until:
            log.info("target %s recovered: circuit closed", st.key)
        st.failures, st.open_until, st.probing, st.throttled = 0, 0.0, False, False
        st.ewma_ms = latency_ms if st.ewma_ms == 0.0 else 0.8 * st.ewma_ms + 0.2 * latency_ms

    def failure(self, st: TargetState, reason: str, cooldown: float | None = None) -> None:
        """Count a failure; `cooldown` (a provider's Retry-After) opens the circuit at once for that long."""
        st.errors += 1
        st.last_error = reason
        now = time.monotonic()
        if cooldown is not None:
            st.open_until, st.probing, st.throttled = now + cooldown, False, True
            return
        st.failures += 1
        if st.probing or st.failures >= self.breaker.failures:
            if not st.open_until or st.probing:
                log.warning("target %s: circuit open for %gs after %d failures (%s)",
                            st.key, self.breaker.cooldown, st.failures, reason)
            st.open_until, st.probing, st.throttled = now + self.breaker.cooldown, False, False

    def neutral(self, st: TargetState) -> None:
        """The attempt ended without saying anything about the target (client error, cancelled)."""
        st.probing = False

    def snapshot(self) -> dict:
        now = time.monotonic()
        return {
            "targets": {k: {"state": st.state(now), "consecutive_failures": st.failures,
                            "open_for_s": round(max(0.0, st.open_until - now), 3), "inflight": st.inflight,
                            "latency_ewma_ms": round(st.ewma_ms, 3), "successes": st.successes,
                            "errors": st.errors, "last_error": st.last_error}
                        for k, st in self.targets.items()},
            "providers": self.providers,
        }


async def probe_forever(health: Health, backends: dict, interval: float) -> None:
    """Active checks: each adapter's health_request() through its own transport, every `interval` s."""
    from proxy.upstream import read_with_timeout

    while True:
        for name, b in backends.items():
            wire = b.provider.health_request()
            if wire is None:
                continue
            ok, err = False, ""
            try:
                async with asyncio.timeout(min(interval, 10.0)):
                    resp = await b.transport.send(wire)
                    await read_with_timeout(resp, 5.0, name)
                    ok = 200 <= resp.status < 300
                    err = "" if ok else f"HTTP {resp.status}"
            except (Exception, TimeoutError) as e:   # a probe must never kill the loop
                err = type(e).__name__
            prev = health.providers.get(name)
            if prev is not None and prev["healthy"] != ok:
                log.warning("provider %s is now %s%s", name, "healthy" if ok else "unhealthy",
                            f" ({err})" if err else "")
            health.providers[name] = {"healthy": ok, "checked_at": time.time(), "error": err}
        await asyncio.sleep(interval)
