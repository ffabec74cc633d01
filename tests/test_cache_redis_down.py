"""Redis down or stalled: the cache misses and the request is served; never a 5xx."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from proxy.gateway import GATEWAY
from tests.cache_helpers import (
    AUTH,
    cache_config,
    drop_prefix,
    new_prefix,
    post,
    redis_or_skip,
    stream_text,
)
from tests.conftest import make_config, openai_provider
from tests.test_cache_kv import closed_port

MSG = [{"role": "user", "content": "is redis there?"}]


async def test_redis_stopped_requests_are_served_without_5xx(start_proxy, fake_openai):
    cfg = make_config(
        providers={"up": openai_provider(fake_openai)},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]}],
        storage={"redis": f"redis://127.0.0.1:{closed_port()}/0"},
        cache={"mode": "all", "redis_timeout": 0.2, "breaker_cooldown": 30})
    server = await start_proxy(cfg)
    body = {"model": "gpt", "messages": MSG}
    t0 = time.monotonic()
    for _ in range(5):
        status, headers, raw = await post(server, body)
        assert status == 200, raw
        assert headers["x-llm-cache"] == "MISS"
    status, _, raw = await post(server, {**body, "stream": True})
    assert status == 200 and stream_text(raw) == fake_openai.reply
    assert time.monotonic() - t0 < 2.0                     # one failed connect, then the breaker skips Redis
    assert len(fake_openai.requests) == 6
    assert server.app[GATEWAY].cache.stats.total("error") >= 1
    async with aiohttp.ClientSession() as s:
        async with s.delete(server.make_url("/admin/cache?all=true"), headers=AUTH) as r:
            assert r.status == 503 and (await r.json())["error"]["code"] == "service_unavailable"


async def test_paused_redis_makes_the_cache_miss_then_it_recovers(start_proxy, fake_openai):
    client = await redis_or_skip()
    prefix = new_prefix()
    try:
        server = await start_proxy(cache_config(fake_openai, "redis", prefix, mode="all", redis_timeout=0.1,
                                                breaker_cooldown=0.3))
        body = {"model": "gpt", "messages": MSG}
        assert (await post(server, body))[1]["x-llm-cache"] == "MISS"
        assert (await post(server, body))[1]["x-llm-cache"] == "HIT"
        await client.execute_command("CLIENT", "PAUSE", "600", "ALL")
        t0 = time.monotonic()
        status, headers, raw = await post(server, body)
        assert status == 200 and headers["x-llm-cache"] == "MISS", raw
        assert time.monotonic() - t0 < 0.55                  # did not wait for Redis to come back
        # Once the pause is over and the breaker half-open, the entry is served again. (Poll: another
        # suite sharing this Redis may pause it too.)
        await asyncio.sleep(0.6)
        deadline = time.monotonic() + 5
        while True:
            before = len(fake_openai.requests)
            if (await post(server, body))[1]["x-llm-cache"] == "HIT":
                break
            assert time.monotonic() < deadline, "the cache did not recover after Redis came back"
            await asyncio.sleep(0.1)
        assert len(fake_openai.requests) == before           # the hit did not reach the provider
    finally:
        await drop_prefix(client, prefix)
        await client.aclose()
