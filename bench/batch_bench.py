"""A 1,000-line batch while live traffic runs (`make bench` calls `run()`; `python -m bench.batch_bench N`).

The proxy (`llm-service serve`, default stages and `jobs` settings) and a zero-latency fake OpenAI upstream
each run in their own process. 5% of the lines ask for a model whose only target refuses connections, so
they fail upstream and go to the error file. One lean client sends sequential live requests for a baseline,
then the batch is submitted with the official SDK and the same client keeps sending while it runs.
Reports the batch's wall time, the live p50 before and during it, and checks that every custom_id
appears exactly once across the output and error files.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import sys
import time
from collections import Counter
from typing import Any

import openai
import orjson

from bench.procs import MASTER, LeanClient, fake_upstream, proxy
from bench.procs import run as run_loop

N = 1000
BASELINE_SECONDS = 2.0


def _lines(n: int) -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "dead" if i % 20 == 7 else "bench", "max_tokens": 16,
                                           "messages": [{"role": "user", "content": f"batch line {i}"}]}}) + b"\n"
                    for i in range(n))


async def _live(client: LeanClient, until: asyncio.Event | float) -> list[float]:
    out: list[float] = []
    body = {"model": "bench", "messages": [{"role": "user", "content": "live"}], "max_tokens": 16}
    while not (until.is_set() if isinstance(until, asyncio.Event) else time.monotonic() >= until):
        out.append(await client.timed(body))
    return out


async def _run(n: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    async with fake_upstream() as up_port, proxy({
        "providers": {"fake": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1"},
                      "dead": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": [{"name": "bench", "targets": [{"provider": "fake", "model": "bench"}]},
                   {"name": "dead", "targets": [{"provider": "dead", "model": "dead"}]}],
        **(extra or {}),
    }) as px, LeanClient(px.port) as live:
        sdk = openai.AsyncOpenAI(base_url=px.url("/v1"), api_key=MASTER, max_retries=0)
        await _live(live, time.monotonic() + 0.5)                       # warm up
        before = await _live(live, time.monotonic() + BASELINE_SECONDS)
        done = asyncio.Event()
        during_task = asyncio.create_task(_live(live, done))
        t0 = time.monotonic()
        f = await sdk.files.create(file=("bench.jsonl", io.BytesIO(_lines(n))), purpose="batch")
        b = await sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        while (b := await sdk.batches.retrieve(b.id)).status not in ("completed", "failed", "cancelled", "expired"):  # noqa: ASYNC110 - polling is the API
            await asyncio.sleep(0.1)
        wall = time.monotonic() - t0
        done.set()
        during = await during_task
        ids: Counter[str] = Counter()
        for fid in (b.output_file_id, b.error_file_id):
            if fid:
                text = (await sdk.files.content(fid)).content.decode()
                ids.update(orjson.loads(line)["custom_id"] for line in text.splitlines())
        await sdk.close()
    p50_before, p50_during = statistics.median(before), statistics.median(during)
    return {
        "lines": n, "status": b.status, "batch_seconds": round(wall, 2),
        "lines_per_second": round(n / wall, 1),
        "completed": b.request_counts.completed if b.request_counts else None,
        "failed": b.request_counts.failed if b.request_counts else None,
        "every_custom_id_once": len(ids) == n and set(ids.values()) == {1},
        "live_p50_ms_before": round(p50_before * 1000, 3), "live_p50_ms_during": round(p50_during * 1000, 3),
        "live_p50_rise_pct": round((p50_during / p50_before - 1) * 100, 1),
        "live_requests_during": len(during),
    }


def run(n: int = N, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`extra`: config sections merged into the proxy's, e.g. {"jobs": {"batch_share": 0.25}}."""
    return dict(run_loop(_run(n, extra)))


if __name__ == "__main__":
    extra = orjson.loads(sys.argv[2]) if len(sys.argv) > 2 else None       # e.g. '{"jobs": {"batch_share": 0.25}}'
    print(orjson.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else N, extra), option=orjson.OPT_INDENT_2).decode())
