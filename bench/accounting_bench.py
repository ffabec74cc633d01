"""Accounting on vs off (acceptance: ledger writes add no measurable latency to a request).

As `make bench` runs it: the proxy (`llm-service serve`, a SQLite ledger file, so usage events go through
the writer process), the fake upstream and this load generator each in their own process, one priced
model through the OpenAI adapter. Three modes: accounting off; on (price every call, one usage event
each, batched ledger writes); on with a hard budget on every call (plus the reservation and settle).
Each mode runs sequential requests (p50/p99: what a request feels) and concurrency 32 (requests/s).
Modes alternate over `rounds` rounds, a fresh proxy each, and the medians are compared, so a burst of
other work on the machine hits all of them. After each "on" run the ledger is counted: every request
the load generator saw answered must be there. `python -m bench.accounting_bench [rounds]` prints.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import sys
from typing import Any

import aiohttp
import orjson

from bench.load import run_load
from bench.procs import MASTER, LeanClient, fake_upstream, proxy
from bench.procs import run as run_loop

SEQUENTIAL = 1500
SECONDS = 2.0
HEADERS = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}
MODES = ("off", "on", "budget")


def _body(mode: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "bench", "max_tokens": 16,
                            "messages": [{"role": "user", "content": "Benchmark prompt: say a few words."}]}
    if mode == "budget":
        body["metadata"] = {"budget_id": "bench"}
    return body


async def _one(up_port: int, mode: str) -> dict[str, Any]:
    raw = {"providers": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1", "api_key": "sk-up"}},
           "models": [{"name": "bench", "targets": [{"provider": "up", "model": "bench"}],
                       "price": {"input": 0.15, "output": 0.60}}],
           "accounting": {"enabled": mode != "off"}, "routing": {"retries": 0}}
    async with proxy(raw) as px:
        if mode == "budget":
            async with aiohttp.ClientSession() as s, s.post(px.url("/admin/budgets"), headers=HEADERS, json={
                    "id": "bench", "amount_usd": 1_000_000, "period": "monthly"}) as r:
                assert r.status == 200, await r.text()
        body = _body(mode)
        seen = 0
        async with LeanClient(px.port) as c:
            for _ in range(200):                                    # warm-up (and the writer process)
                await c.timed(body)
            await asyncio.sleep(0.5)
            lat = [await c.timed(body) for _ in range(SEQUENTIAL)]
        seen += 200 + SEQUENTIAL
        conc = await run_load(px.url(), orjson.dumps(body), HEADERS, 32, SECONDS, False)
        seen += len(conc.latencies) + conc.errors                  # warm-up requests counted below too
        px.stop()                                                   # SIGTERM: the writer flushes everything
        events = None
        if mode != "off":
            with sqlite3.connect(px.tmp / "ledger.db") as conn:
                events = int(conn.execute("SELECT COUNT(*) FROM usage_events").fetchone()[0])
    lat.sort()
    out: dict[str, Any] = {"seq_p50_ms": round(statistics.median(lat) * 1000, 3),
                           "seq_p99_ms": round(lat[int(0.99 * len(lat))] * 1000, 3),
                           "c32_rps": round(conc.rps, 1), "c32_p50_ms": round(conc.pct(conc.latencies, 0.5), 3),
                           "c32_errors": conc.errors}
    if events is not None:
        out["events"], out["answered_at_least"] = events, seen
    return out


async def _measure(rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    async with fake_upstream() as up_port:
        for i in range(rounds):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                runs[mode].append(await _one(up_port, mode))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("seq_p50_ms", "seq_p99_ms", "c32_rps", "c32_p50_ms")}
           for m, rs in runs.items()}
    off = med["off"]
    out: dict[str, Any] = {"rounds": rounds, "sequential_requests": SEQUENTIAL, "c32_seconds": SECONDS,
                           "median": med, "runs": runs}
    for m in ("on", "budget"):
        out[f"{m}_added_seq_p50_ms"] = round(med[m]["seq_p50_ms"] - off["seq_p50_ms"], 3)
        out[f"{m}_c32_rps_ratio"] = round(med[m]["c32_rps"] / off["c32_rps"], 3) if off["c32_rps"] else None
        out[f"{m}_events_missing"] = sum(max(0, r["answered_at_least"] - r["events"]) for r in runs[m])
    return out


def run(rounds: int = 3) -> dict[str, Any]:
    r: dict[str, Any] = run_loop(_measure(rounds))
    for m in MODES:
        x = r["median"][m]
        print(f"  accounting {m:6s}: sequential p50 {x['seq_p50_ms']} ms p99 {x['seq_p99_ms']} ms; "
              f"c32 {x['c32_rps']} req/s, p50 {x['c32_p50_ms']} ms", flush=True)
    for m in ("on", "budget"):
        print(f"  accounting {m} vs off: sequential p50 {r[f'{m}_added_seq_p50_ms']:+.3f} ms, c32 throughput x"
              f"{r[f'{m}_c32_rps_ratio']}, events missing from the ledger: {r[f'{m}_events_missing']}", flush=True)
    return r


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
