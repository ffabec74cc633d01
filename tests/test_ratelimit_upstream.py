"""Upstream 429: the router honours Retry-After, cools the target down, waits (jittered, bounded) when the
cooldown ends soon enough, and only then answers 429 (never 503) with Retry-After."""

from __future__ import annotations

import time

import aiohttp
import orjson
from aiohttp import web

from tests.conftest import MASTER, make_config

AUTH = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hi"}]


def _upstream(limited: int, retry_after: str) -> tuple[web.Application, list[float]]:
    """OpenAI-format upstream: the first `limited` calls get 429 with `retry_after`, then answers."""
    seen: list[float] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(time.monotonic())
        if len(seen) <= limited:
            return web.json_response({"error": {"message": "Rate limit reached", "type": "requests",
                                                "param": None, "code": "rate_limit_exceeded"}},
                                     status=429, headers={"retry-after": retry_after})
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": body["model"],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app, seen


async def _setup(aiohttp_server, start_proxy, limited: int, retry_after: str, **routing):
    app, seen = _upstream(limited, retry_after)
    up = await aiohttp_server(app)
    server = await start_proxy(make_config(
        providers={"up": {"type": "openai", "base_url": str(up.make_url("/v1")), "api_key": "sk-x"}},
        models=[{"name": "m", "targets": [{"provider": "up", "model": "x"}]}], routing=routing))
    return server, seen


async def _post(server):
    async with aiohttp.ClientSession() as s:
        t = time.monotonic()
        async with s.post(server.make_url("/v1/chat/completions"), headers=AUTH,
                          data=orjson.dumps({"model": "m", "messages": MSG})) as r:
            return r.status, r.headers.copy(), await r.read(), time.monotonic() - t


async def test_waits_for_retry_after_then_succeeds(aiohttp_server, start_proxy):
    server, seen = await _setup(aiohttp_server, start_proxy, limited=1, retry_after="1")
    status, h, _, took = await _post(server)
    assert status == 200 and h["x-llm-attempts"] == "2" and len(seen) == 2
    assert 1.0 <= seen[1] - seen[0] < 1.6            # waited out the Retry-After, plus a little jitter
    assert took < 2.0


async def test_long_retry_after_answers_429_at_once_and_cools_the_target(aiohttp_server, start_proxy):
    server, seen = await _setup(aiohttp_server, start_proxy, limited=5, retry_after="30")
    status, h, raw, took = await _post(server)
    assert status == 429 and h["retry-after"] == "30" and took < 0.5
    assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    status, h, raw, took = await _post(server)        # cooling down: 429 (not 503), upstream not called
    assert status == 429 and len(seen) == 1 and took < 0.5
    assert 29 <= int(h["retry-after"]) <= 30


async def test_wait_is_bounded_by_rate_limit_wait(aiohttp_server, start_proxy):
    server, seen = await _setup(aiohttp_server, start_proxy, limited=100, retry_after="1", rate_limit_wait=1.5)
    status, h, _, took = await _post(server)
    assert status == 429 and "retry-after" in h
    assert len(seen) == 2 and took < 2.5               # one wait of ~1 s, then the next would not fit
