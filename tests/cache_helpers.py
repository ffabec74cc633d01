"""Shared fixtures for the response-cache tests: a proxy with a cache in front of the fake upstream,
on the in-memory store or a real Redis under a unique key prefix (removed afterwards)."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from tests.conftest import MASTER, make_config, openai_provider, require_service

REDIS_URL = "redis://127.0.0.1:6379/0"
AUTH = {"Authorization": f"Bearer {MASTER}"}


async def redis_or_skip() -> Any:
    from redis.asyncio import Redis
    client = Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as e:
        await client.aclose()
        require_service("redis", f"{REDIS_URL}: {type(e).__name__}")
    return client


async def drop_prefix(client: Any, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
    if keys:
        await client.delete(*keys)


def cache_config(fake: Any, backend: str, prefix: str, **cache: Any) -> Any:
    storage = {"redis": REDIS_URL} if backend == "redis" else {}
    return make_config(
        providers={"up": openai_provider(fake, timeouts={"first_byte": 2, "idle": 1, "total": 10})},
        models=[{"name": "gpt", "aliases": ["gpt-alias"], "targets": [{"provider": "up", "model": "gpt-4o-mini"}]},
                {"name": "gpt-b", "targets": [{"provider": "up", "model": "gpt-4o"}]}],
        # A healthy Redis on a loaded test machine can take longer than the 0.25 s default once in a while,
        # and one timeout skips Redis for the breaker's cooldown: tests of behaviour, not of timeouts,
        # give it room (the Redis-down tests set their own).
        storage=storage, cache={"prefix": prefix, "redis_timeout": 2.0, **cache})


def new_prefix() -> str:
    return f"test:cache:{uuid.uuid4().hex[:12]}:"


async def post(server: Any, body: dict[str, Any], headers: dict[str, str] | None = None,
               path: str = "/v1/chat/completions") -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url(path), data=orjson.dumps(body), headers={**AUTH, **(headers or {})}) as r:
            return r.status, CIMultiDict(r.headers), await r.read()


def stream_text(raw: bytes) -> str:
    out = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            for ch in orjson.loads(line[6:]).get("choices") or []:
                out.append(ch["delta"].get("content") or "")
    return "".join(out)
