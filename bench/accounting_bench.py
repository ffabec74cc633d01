"""Accounting on vs off (acceptance: ledger writes add no measurable latency to a request).

As `make bench` runs it: the proxies (`llm-service serve`, each on its own SQLite ledger file, so usage
events go through the writer process), the fake upstream and this load generator each in their own
process, one priced model through the OpenAI adapter. Three proxies side by side: accounting off; on
(price every call, one usage event each, batched ledger writes); on with a hard budget on every call
(plus the reservation and the settle). Short runs alternate between them, so the slow drifts of a
shared machine hit all three alike: sequential requests (p50/p99: what one request feels) and
concurrency 32 (requests/s). At the end each ledger is counted: every request answered must be there.
`python -m bench.accounting_bench [alternations]` prints the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
import sys
from typing import Any

import aiohttp
import orjson

from bench.load import run_load
from bench.procs import MASTER, LeanClient, Proxy, fake_upstream, proxy
from bench.procs import run as run_loop

SEQUENTIAL = 300             # requests per sequential run
SECONDS = 1.0                # per concurrency-32 run
HEADERS = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}
MODES = ("off", "on", "budget")


def _body(mode: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "bench", "max_tokens": 16,
                            "messages": [{"role": "user", "content": "Benchmark prompt: say a few words."}]}
    if mode == "budget":
        body["metadata"] = {"budget_id": "bench"}
    return body


def _config(up_port: int, mode: str) -> dict[str, Any]:
    return {"providers": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1", "api_key": "sk-up"}},
            "models": [{"name": "bench", "targets": [{"provider": "up", "model": "bench"}],
                        "price": {"input": 0.15, "output": 0.60}}],
            "accounting": {"enabled": mode != "off"}, "routing": {"retries": 0}}


async def _sequential(px: Proxy, body: dict[str, Any], n: int) -> list[float]:
    async with LeanClient(px.port) as c:
        return [await c.timed(body) for _ in range(n)]


async def _measure(alternations: int) -> dict[str, Any]:
    seq: dict[str, list[float]] = {m: [] for m in MODES}
    rps: dict[str, list[float]] = {m: [] for m in MODES}
    answered = dict.fromkeys(MODES, 0)
    events: dict[str, int] = {}
    async with fake_upstream() as up_port, contextlib.AsyncExitStack() as stack:
        pxs = {m: await stack.enter_async_context(proxy(_config(up_port, m))) for m in MODES}
        async with aiohttp.ClientSession() as s, s.post(pxs["budget"].url("/admin/budgets"), headers=HEADERS, json={
                "id": "bench", "amount_usd": 1_000_000, "period": "monthly"}) as r:
            assert r.status == 200, await r.text()
        for m in MODES:                                        # warm-up (and the writer processes)
            await _sequential(pxs[m], _body(m), 200)
            answered[m] += 200
        await asyncio.sleep(1.0)
        for i in range(alternations):
            order = MODES if i % 2 == 0 else MODES[::-1]
            for m in order:
                seq[m] += await _sequential(pxs[m], _body(m), SEQUENTIAL)
                answered[m] += SEQUENTIAL
            for m in order:
                res = await run_load(pxs[m].url(), orjson.dumps(_body(m)), HEADERS, 32, SECONDS, False, warmup=0.2)
                rps[m].append(res.rps)
                answered[m] += len(res.latencies)             # warm-up answers are not counted: a bound
        for m in ("on", "budget"):
            pxs[m].stop()                                      # SIGTERM: the writer flushes everything
            with sqlite3.connect(pxs[m].tmp / "ledger.db") as conn:
                events[m] = int(conn.execute("SELECT COUNT(*) FROM usage_events").fetchone()[0])
    med: dict[str, dict[str, float]] = {}
    for m in MODES:
        lat = sorted(seq[m])
        med[m] = {"seq_p50_ms": round(statistics.median(lat) * 1000, 3),
                  "seq_p99_ms": round(lat[int(0.99 * len(lat))] * 1000, 3),
                  "c32_rps": round(statistics.median(rps[m]), 1)}
    off = med["off"]
    out: dict[str, Any] = {"alternations": alternations, "sequential_per_run": SEQUENTIAL, "c32_seconds": SECONDS,
                           "median": med, "c32_rps_runs": rps}
    for m in ("on", "budget"):
        out[f"{m}_added_seq_p50_ms"] = round(med[m]["seq_p50_ms"] - off["seq_p50_ms"], 3)
        out[f"{m}_c32_rps_ratio"] = round(med[m]["c32_rps"] / off["c32_rps"], 3) if off["c32_rps"] else None
        out[f"{m}_events"], out[f"{m}_answered_at_least"] = events[m], answered[m]
        out[f"{m}_events_missing"] = max(0, answered[m] - events[m])
    return out


def run(alternations: int = 4) -> dict[str, Any]:
    r: dict[str, Any] = run_loop(_measure(alternations))
    for m in MODES:
        x = r["median"][m]
        print(f"  accounting {m:6s}: sequential p50 {x['seq_p50_ms']} ms p99 {x['seq_p99_ms']} ms; "
              f"c32 {x['c32_rps']} req/s (runs {r['c32_rps_runs'][m]})", flush=True)
    for m in ("on", "budget"):
        print(f"  accounting {m} vs off: sequential p50 {r[f'{m}_added_seq_p50_ms']:+.3f} ms, c32 throughput x"
              f"{r[f'{m}_c32_rps_ratio']}; ledger rows {r[f'{m}_events']} for at least {r[f'{m}_answered_at_least']} "
              f"answers (missing: {r[f'{m}_events_missing']})", flush=True)
    return r


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
