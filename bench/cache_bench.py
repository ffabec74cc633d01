"""Cache hit vs miss latency through the full pipeline (`make bench` calls `run()`).

The proxy (`llm-service serve`, default stages, `cache.mode: all`) and a zero-latency fake OpenAI
upstream each run in their own process; one lean keep-alive client sends sequential requests. Misses
use a distinct prompt each (a real lookup, upstream call and store); hits repeat one primed prompt.
They alternate in blocks of `BLOCK`, so a burst of other work on the machine hits both, while each
request follows one of its own kind: a request also waits for the after-answer work (accounting,
metrics, logs) of the one before it, and strict pairs would charge every hit with a miss's.
Reports the p50 of both, for JSON answers and for streams.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from bench.procs import LeanClient, fake_upstream, proxy
from bench.procs import run as run_loop

N = 1000
BLOCK = 50


def _p50_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


async def _run(n: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    async with fake_upstream() as up_port, proxy({
        "providers": {"fake": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1"}},
        "models": [{"name": "bench", "targets": [{"provider": "fake", "model": "bench"}]}],
        "cache": {"mode": "all"}, **(extra or {}),
    }) as px, LeanClient(px.port) as client:
        def body(prompt: str) -> dict[str, Any]:
            return {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
        for i in range(100):                                   # warm up both paths
            await client.timed(body(f"warm {i}"), "MISS")
            await client.timed(body(f"warm {i}"), "HIT")
        misses, hits, s_misses, s_hits = [], [], [], []
        for start in range(0, n, BLOCK):                       # alternating blocks: same conditions for both
            for i in range(start, min(n, start + BLOCK)):
                misses.append(await client.timed(body(f"miss {i}"), "MISS"))
            for _ in range(start, min(n, start + BLOCK)):
                hits.append(await client.timed(body("warm 0"), "HIT"))
        streamed = {"stream": True, "stream_options": {"include_usage": True}}
        await client.timed({**body("stream warm"), **streamed}, "MISS")
        for start in range(0, n // 2, BLOCK):
            for i in range(start, min(n // 2, start + BLOCK)):
                s_misses.append(await client.timed({**body(f"stream miss {i}"), **streamed}, "MISS"))
            for _ in range(start, min(n // 2, start + BLOCK)):
                s_hits.append(await client.timed({**body("stream warm"), **streamed}, "HIT"))
    miss, hit, s_miss, s_hit = _p50_ms(misses), _p50_ms(hits), _p50_ms(s_misses), _p50_ms(s_hits)
    return {"requests_each": n, "miss_p50_ms": miss, "hit_p50_ms": hit,
            "speedup": round(miss / hit, 2) if hit else float("nan"),
            "stream_requests_each": n // 2, "stream_miss_p50_ms": s_miss, "stream_hit_p50_ms": s_hit,
            "stream_speedup": round(s_miss / s_hit, 2) if s_hit else float("nan")}


def run(n: int = N, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`extra`: more top-level config sections (e.g. to see what a stage costs a hit)."""
    return run_loop(_run(n, extra))  # type: ignore[no-any-return]


if __name__ == "__main__":
    res = run(int(sys.argv[1]) if len(sys.argv) > 1 else N)
    print(f"cache, {res['requests_each']} sequential requests each:\n"
          f"  json:   miss p50 {res['miss_p50_ms']} ms, hit p50 {res['hit_p50_ms']} ms, "
          f"hit {res['speedup']}x faster\n"
          f"  stream: miss p50 {res['stream_miss_p50_ms']} ms, hit p50 {res['stream_hit_p50_ms']} ms, "
          f"hit {res['stream_speedup']}x faster")
