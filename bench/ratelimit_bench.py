"""Rate-limit stage cost (issue 6): in-process check+settle per request, and Redis round trips per request.

`python -m bench.ratelimit_bench` or via `make bench`. In-process: median of 5 runs of 20k calls through the
stage (global + model + key levels, rpm and tpm; token estimate included) minus the same path without the
stage. Redis: commands sent per request, counted by wrapping the client's execute_command.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time

from proxy.config import parse
from proxy.context import ChatCall, Reply, Usage
from proxy.pipeline.auth import Principal
from proxy.pipeline.ratelimit import RateLimitStage
from proxy.routing.backends import build_backends
from proxy.routing.router import Router

N, RUNS = 20_000, 5
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BIG = 10**9


def _config(redis: str = "", prefix: str = "llm:rl:bench:"):
    return parse({"server": {"master_key": "sk-bench"}, "storage": {"redis": redis},
                  "providers": {"local": {"type": "mock"}},
                  "models": [{"name": "mock", "targets": [{"provider": "local", "model": "mock"}]},
                             {"name": "gpt", "targets": [{"provider": "local", "model": "gpt-4o-mini"}]}],
                  "limits": {"prefix": prefix, "global": {"rpm": BIG, "tpm": BIG},
                             "models": {"mock": {"rpm": BIG, "tpm": BIG, "max_concurrency": BIG},
                                        "gpt": {"rpm": BIG, "tpm": BIG}}}}, env={})


KEY = Principal(id="k_bench", rpm=BIG, tpm=BIG, max_concurrency=BIG, source_id=None)
BODY = {"model": "mock", "messages": [{"role": "user", "content": "Benchmark prompt: say a few words."}],
        "max_tokens": 16}
REPLY = Reply(body=b"{}")


async def _endpoint(call: ChatCall) -> Reply:
    call.usage = Usage(prompt_tokens=10, completion_tokens=16, total_tokens=26)
    return REPLY


async def _loop(stage: RateLimitStage | None, model: str) -> float:
    body = {**BODY, "model": model}
    t = time.perf_counter()
    for _ in range(N):
        call = ChatCall(body=body, model=model, stream=False, key=KEY)
        if stage is None:
            await _endpoint(call)
        else:
            pending = stage.check(call)
            if pending is not None:
                await pending
            await _endpoint(call)
        await call.finish()
    return (time.perf_counter() - t) / N * 1e6


async def _in_process() -> dict:
    cfg = _config()
    stage = RateLimitStage(cfg, Router(cfg, build_backends(cfg)))
    out = {}
    for model in ("mock", "gpt"):
        base = statistics.median([await _loop(None, model) for _ in range(RUNS)])
        full = statistics.median([await _loop(stage, model) for _ in range(RUNS)])
        out[model] = round(full - base, 2)
    return {"inprocess_us_per_request": out["mock"], "inprocess_us_gpt_model": out["gpt"]}


async def _redis() -> dict:
    prefix = f"llm:rl:bench:{secrets.token_hex(4)}:"
    cfg = _config(REDIS, prefix)
    stage = RateLimitStage(cfg, Router(cfg, build_backends(cfg)))
    lim = stage.limiter
    client = lim.client  # type: ignore[attr-defined]
    sent: list[str] = []
    orig = client.execute_command

    async def counting(*args, **kw):
        sent.append(str(args[0]))
        return await orig(*args, **kw)
    client.execute_command = counting
    try:
        await stage.start()
        try:
            await asyncio.wait_for(client.ping(), 1)
        except Exception as e:
            return {"redis": f"unavailable ({type(e).__name__})"}
        n, checks, lat = 200, 0, []
        sent.clear()
        for _ in range(n):
            call = ChatCall(body=dict(BODY), model="mock", stream=False, key=KEY)
            t = time.perf_counter()
            before = len(sent)
            pending = stage.check(call)
            if pending is not None:
                await pending
            await _endpoint(call)
            checks += len(sent) - before
            lat.append((time.perf_counter() - t) * 1e6)
            await call.finish()
        keys = await orig("KEYS", prefix + "*")       # bench-only cleanup, tiny keyspace
        if keys:
            await orig("DEL", *keys)
        return {"redis_round_trips_per_check": checks / n, "redis_round_trips_per_request": len(sent) / n,
                "redis_check_p50_us": round(statistics.median(lat), 1)}
    finally:
        await stage.close()


def run() -> dict:
    async def both() -> dict:
        return {**await _in_process(), **await _redis()}
    res = asyncio.run(both())
    print(f"rate limit: in-process check+settle {res['inprocess_us_per_request']} us/request "
          f"({res['inprocess_us_gpt_model']} us for a gpt-4o-mini target: no tokenizer on the request path); "
          f"redis: {res.get('redis_round_trips_per_check')} round trip(s) per check, "
          f"{res.get('redis_round_trips_per_request')} per request incl. settle, "
          f"check p50 {res.get('redis_check_p50_us')} us")
    return res


if __name__ == "__main__":
    run()
