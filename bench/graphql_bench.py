"""Per-chunk cost of the GraphQL subscription against the SSE relay, for the same upstream stream.

One proxy (`llm-service serve`, default stages) in its own process, two zero-latency fake OpenAI
upstreams (SHORT and LONG content chunks per stream). Streams are read sequentially: SSE with the lean
keep-alive HTTP client, subscriptions on one graphql-transport-ws connection. The per-chunk figure is
(LONG stream - SHORT stream) / (LONG - SHORT chunks): the per-request costs (auth, plan, accounting,
the GraphQL parse and validation) cancel out. Reported both as client wall time and as the proxy
process's CPU time. `python -m bench.graphql_bench [STREAMS]`.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from typing import Any

import aiohttp
import orjson

from bench.procs import MASTER, LeanClient, cpu_seconds, fake_upstream, proxy
from bench.procs import run as run_loop

N = 200
SHORT, LONG = 10, 210
SUB = ("subscription($i: ChatInput!) { chatCompletionStream(input: $i) { delta finishReason "
       "usage { totalTokens } } }")


async def _sse(px: Any, model: str, n: int) -> tuple[float, float]:
    async with LeanClient(px.port) as client:
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(20):
            await client.timed(body)
        cpu0 = cpu_seconds(px.proc.pid)
        times = [await client.timed(body) for _ in range(n)]
        return statistics.median(times), (cpu_seconds(px.proc.pid) - cpu0) / n


async def _ws(px: Any, model: str, n: int) -> tuple[float, float]:
    ids = itertools.count(1)
    variables = {"i": {"model": model, "messages": [{"role": "user", "content": "hi"}]}}
    async with aiohttp.ClientSession() as s, s.ws_connect(f"ws://127.0.0.1:{px.port}/graphql",
                                                          protocols=("graphql-transport-ws",)) as ws:
        await ws.send_str(orjson.dumps({"type": "connection_init",
                                        "payload": {"Authorization": f"Bearer {MASTER}"}}).decode())
        assert orjson.loads((await ws.receive()).data)["type"] == "connection_ack"

        async def one() -> float:
            op = str(next(ids))
            t0 = time.perf_counter()
            await ws.send_str(orjson.dumps({"id": op, "type": "subscribe",
                                            "payload": {"query": SUB, "variables": variables}}).decode())
            while True:
                m = orjson.loads((await ws.receive()).data)
                if m.get("id") == op and m["type"] in ("complete", "error"):
                    if m["type"] == "error":
                        raise RuntimeError(m)
                    return time.perf_counter() - t0
        for _ in range(20):
            await one()
        cpu0 = cpu_seconds(px.proc.pid)
        times = [await one() for _ in range(n)]
        return statistics.median(times), (cpu_seconds(px.proc.pid) - cpu0) / n


async def _run(n: int) -> dict[str, Any]:
    async with fake_upstream(SHORT) as short_port, fake_upstream(LONG) as long_port, proxy({
        "providers": {"short": {"type": "openai", "base_url": f"http://127.0.0.1:{short_port}/v1"},
                      "long": {"type": "openai", "base_url": f"http://127.0.0.1:{long_port}/v1"}},
        "models": [{"name": "short", "targets": [{"provider": "short", "model": "bench"}]},
                   {"name": "long", "targets": [{"provider": "long", "model": "bench"}]}],
    }) as px:
        out: dict[str, Any] = {"streams_each": n, "chunks_short": SHORT, "chunks_long": LONG}
        extra = LONG - SHORT
        for name, fn in (("sse", _sse), ("graphql_ws", _ws)):
            short_t, short_cpu = await fn(px, "short", n)
            long_t, long_cpu = await fn(px, "long", n)
            out[name] = {"stream_short_p50_ms": round(short_t * 1000, 3), "stream_long_p50_ms": round(long_t * 1000, 3),
                         "per_chunk_wall_us": round((long_t - short_t) / extra * 1e6, 2),
                         "per_chunk_proxy_cpu_us": round((long_cpu - short_cpu) / extra * 1e6, 2)}
        for k in ("per_chunk_wall_us", "per_chunk_proxy_cpu_us"):
            sse = out["sse"][k]
            out[f"ratio_{k}"] = round(out["graphql_ws"][k] / sse, 2) if sse > 0 else float("nan")
        return out


def run(n: int = N) -> dict[str, Any]:
    return run_loop(_run(n))  # type: ignore[no-any-return]


if __name__ == "__main__":
    res = run(int(sys.argv[1]) if len(sys.argv) > 1 else N)
    print(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())
