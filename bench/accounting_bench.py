"""Accounting on vs off (acceptance: ledger writes add no measurable latency to a request).

An in-process proxy on a real SQLite ledger file, mock provider, a priced model and a hard budget on
every call (so "on" pays for the budget reservation, pricing, the usage event and its batched write).
Two loads per mode: ~1000 sequential requests (p50/p99 latency) and concurrency 16 for ~3 s (rps, p50).
Modes alternate (off, on, off, on) and the better run of each is kept, to damp machine noise.
`run()` returns the figures; `python -m bench.accounting_bench` prints them.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from bench.load import run_load
from proxy.app import build_app
from proxy.config import parse
from proxy.gateway import GATEWAY

MASTER = "sk-bench-master"
SEQUENTIAL = int(os.environ.get("BENCH_ACCOUNTING_SEQ", "1000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
HEADERS = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}


def _config(db: str, enabled: bool):
    return parse({"server": {"master_key": MASTER, "log_level": "warning"},
                  "storage": {"database": f"sqlite:///{db}"},
                  "providers": {"local": {"type": "mock", "reply_tokens": 16}},
                  "models": [{"name": "mock", "targets": [{"provider": "local", "model": "mock"}],
                              "price": {"input": 0.15, "output": 0.60}}],
                  "telemetry": {"logs": {"access_log": False}},
                  "accounting": {"enabled": enabled}}, env={})


async def _one_mode(enabled: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        server = TestServer(build_app(_config(f"{tmp}/bench.db", enabled)))
        await server.start_server()
        url = str(server.make_url("/v1/chat/completions"))
        body_dict: dict = {"model": "mock", "max_tokens": 16,
                           "messages": [{"role": "user", "content": "Benchmark prompt: say a few words."}]}
        if enabled:
            async with aiohttp.ClientSession() as s:
                async with s.post(server.make_url("/admin/budgets"), headers=HEADERS,
                                  json={"id": "bench", "amount_usd": 1_000_000, "period": "monthly"}) as r:
                    assert r.status == 200, await r.text()
            body_dict["metadata"] = {"budget_id": "bench"}
        body = orjson.dumps(body_dict)
        try:
            lat: list[float] = []
            async with aiohttp.ClientSession() as s:
                for _ in range(50):                                  # warm-up
                    async with s.post(url, data=body, headers=HEADERS) as r:
                        await r.read()
                for _ in range(SEQUENTIAL):
                    t0 = time.perf_counter()
                    async with s.post(url, data=body, headers=HEADERS) as r:
                        await r.read()
                        assert r.status == 200
                    lat.append(time.perf_counter() - t0)
            lat.sort()
            conc = await run_load(url, body, HEADERS, 16, SECONDS, False)
            out = {"seq_p50_ms": round(statistics.median(lat) * 1000, 3),
                   "seq_p99_ms": round(lat[int(0.99 * len(lat))] * 1000, 3),
                   "seq_rps": round(len(lat) / sum(lat), 1), "c16": conc.summary()}
            gw_acct = server.app[GATEWAY].accounting
            if gw_acct is not None:
                await gw_acct.writer.flush()
                out["events_written"] = gw_acct.writer.written
        finally:
            await server.close()
    return out


def _better(a: dict, b: dict) -> dict:
    return a if a["seq_p50_ms"] + a["c16"]["p50_ms"] <= b["seq_p50_ms"] + b["c16"]["p50_ms"] else b


async def _measure() -> dict:
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for enabled in (False, True, False, True):
        runs[enabled].append(await _one_mode(enabled))
    off, on = _better(*runs[False]), _better(*runs[True])
    return {"name": "accounting_on_vs_off", "sequential_requests": SEQUENTIAL, "c16_seconds": SECONDS,
            "off": off, "on": on,
            "added_seq_p50_ms": round(on["seq_p50_ms"] - off["seq_p50_ms"], 3),
            "added_c16_p50_ms": round(on["c16"]["p50_ms"] - off["c16"]["p50_ms"], 3),
            "c16_rps_ratio": round(on["c16"]["rps"] / off["c16"]["rps"], 3) if off["c16"]["rps"] else None}


def run() -> dict:
    r = asyncio.run(_measure())
    off, on = r["off"], r["on"]
    print(f"accounting off: sequential p50 {off['seq_p50_ms']} ms p99 {off['seq_p99_ms']} ms ({off['seq_rps']} rps); "
          f"c16 p50 {off['c16']['p50_ms']} ms, {off['c16']['rps']} rps")
    print(f"accounting on:  sequential p50 {on['seq_p50_ms']} ms p99 {on['seq_p99_ms']} ms ({on['seq_rps']} rps); "
          f"c16 p50 {on['c16']['p50_ms']} ms, {on['c16']['rps']} rps; events written {on.get('events_written')}")
    print(f"added by accounting: sequential p50 {r['added_seq_p50_ms']:+.3f} ms, c16 p50 {r['added_c16_p50_ms']:+.3f} ms, "
          f"c16 rps ratio {r['c16_rps_ratio']}")
    return r


if __name__ == "__main__":
    run()
