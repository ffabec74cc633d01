"""Micro-benchmark: what auth with a cached virtual key adds per request (acceptance: under 50 us).

Measures `Authenticator.authenticate()` for a virtual key whose lookup is already cached (hash + cache hit +
expiry check), against a real SQLite ledger so the first call is a genuine miss. `run()` returns the figures;
`python -m bench.auth_bench` prints them. Median of 5 runs of 20k calls each.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

from proxy.config import parse
from proxy.keyservice import KeyStore
from proxy.pipeline.auth import Authenticator

ITERATIONS = 20_000
RUNS = 5
BUDGET_US = 50.0


async def _measure() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse({"server": {"master_key": "sk-bench-master"},
                     "storage": {"database": f"sqlite:///{tmp}/bench.db", "key_cache_ttl": 60},
                     "providers": {"local": {"type": "mock"}},
                     "models": [{"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}]}, env={})
        store = KeyStore(cfg)
        await store.start(background=False)
        try:
            _, secret = await store.create({"name": "bench", "models": ["mock", "gpt-*"]}, actor="bench", ip=None)
            auth = Authenticator(cfg.server.master_key, store.lookup)
            await auth.authenticate(secret)                       # warm the cache
            runs = []
            for _ in range(RUNS):
                t0 = time.perf_counter()
                for _ in range(ITERATIONS):
                    await auth.authenticate(secret)
                runs.append((time.perf_counter() - t0) / ITERATIONS * 1e6)
            master_runs = []
            for _ in range(RUNS):
                t0 = time.perf_counter()
                for _ in range(ITERATIONS):
                    await auth.authenticate("sk-bench-master")
                master_runs.append((time.perf_counter() - t0) / ITERATIONS * 1e6)
            assert store.lookup.queries == 1, "the benchmark must measure cache hits only"
        finally:
            await store.close()
    median = statistics.median(runs)
    return {"name": "auth_cached_virtual_key", "iterations": ITERATIONS, "runs": RUNS,
            "us_per_call_median": round(median, 2), "us_per_call_runs": [round(r, 2) for r in runs],
            "master_key_us_per_call_median": round(statistics.median(master_runs), 2),
            "budget_us": BUDGET_US, "ok": median < BUDGET_US}


def run() -> dict:
    result = asyncio.run(_measure())
    print(f"auth (cached virtual key): {result['us_per_call_median']:.2f} us/call median of {RUNS}x{ITERATIONS} "
          f"(master key: {result['master_key_us_per_call_median']:.2f} us; budget {BUDGET_US:g} us) "
          f"{'OK' if result['ok'] else 'OVER BUDGET'}")
    return result


if __name__ == "__main__":
    run()
