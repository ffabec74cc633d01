"""A small closed-loop load generator: N workers, fixed duration, latencies per request."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)    # seconds, whole response
    ttfb: list[float] = field(default_factory=list)         # seconds, first body chunk (streams)
    errors: int = 0
    elapsed: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        s = sorted(values)
        return s[min(len(s) - 1, int(q * len(s)))] * 1000

    def summary(self) -> dict[str, float]:
        out = {"requests": len(self.latencies), "errors": self.errors, "rps": round(self.rps, 1),
               "p50_ms": round(self.pct(self.latencies, 0.5), 3), "p99_ms": round(self.pct(self.latencies, 0.99), 3)}
        if self.ttfb:
            out["ttfb_p50_ms"] = round(self.pct(self.ttfb, 0.5), 3)
            out["ttfb_p99_ms"] = round(self.pct(self.ttfb, 0.99), 3)
        return out


async def run_load(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float,
                   stream: bool, warmup: float = 0.5, expect: int = 200,
                   on_start: Callable[[], None] | None = None) -> Result:
    """`on_start`: called when the warm-up ends and recording begins (e.g. to read CPU counters)."""
    res = Result()
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = 0.0
        recording = False

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        if stream:
                            first = None
                            async for _ in r.content.iter_any():
                                if first is None:
                                    first = time.perf_counter()
                        else:
                            await r.read()
                        ok = r.status == expect
                except aiohttp.ClientError:
                    ok, first = False, None
                t1 = time.perf_counter()
                if not recording:
                    continue
                if not ok:
                    res.errors += 1
                    continue
                res.latencies.append(t1 - t0)
                if stream and first is not None:
                    res.ttfb.append(first - t0)

        stop_at = time.perf_counter() + warmup
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        recording = True
        if on_start is not None:
            on_start()
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.elapsed = time.perf_counter() - start
    return res


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
