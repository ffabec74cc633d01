"""The router: fallbacks, retries, TTFT failover, breakers, balancing, aliases and versions."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import aiohttp
import openai
import orjson
import pytest

from proxy.config import BreakerConfig, ModelConfig, Target
from proxy.routing.balance import ordered
from proxy.routing.health import Health
from tests.conftest import MASTER, make_config, openai_provider
from tests.fakes.openai_upstream import FakeOpenAI

AUTH = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hi"}]
DEAD = {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}


async def _fake(aiohttp_server) -> FakeOpenAI:
    fake = FakeOpenAI()
    fake.server = await aiohttp_server(fake.app)
    return fake


async def _post(server, body, headers=None):
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/v1/chat/completions"), data=orjson.dumps(body),
                          headers={**AUTH, **(headers or {})}) as r:
            return r.status, r.headers.copy(), await r.read()


def _cfg(primary, backup, routing=None, **model):
    return make_config(
        providers={"primary": primary, "backup": backup},
        models=[{"name": "m", "targets": [{"provider": "primary", "model": "p"},
                                          {"provider": "backup", "model": "b"}], **model}],
        routing=routing or {"retries": 0})


@pytest.mark.parametrize("fault", ["refuse", "reset", "error500", "error429", "silent"])
async def test_fallback_to_next_target(fault, aiohttp_server, start_proxy):
    backup = await _fake(aiohttp_server)
    if fault == "refuse":
        primary_cfg, primary = DEAD, None
    else:
        primary = await _fake(aiohttp_server)
        primary.mode = {"silent": "slow_first_byte"}.get(fault, fault)
        primary.delay = 10
        primary_cfg = openai_provider(primary)
    server = await start_proxy(make_config(
        providers={"primary": primary_cfg, "backup": openai_provider(backup)},
        models=[{"name": "m", "targets": [{"provider": "primary", "model": "p", "ttft_timeout": 0.3},
                                          {"provider": "backup", "model": "b"}]}],
        routing={"retries": 0}))
    for stream in (False, True):
        status, headers, raw = await _post(server, {"model": "m", "messages": MSG, "stream": stream})
        assert status == 200, raw
        assert headers["x-llm-provider"] == "backup"
        assert headers["x-llm-attempts"] == "2"
        assert (b"[DONE]" in raw) == stream
        if fault == "error429":
            break       # the primary is cooling down now (Retry-After): the next call goes straight to backup
    if fault == "error429":
        status, headers, _ = await _post(server, {"model": "m", "messages": MSG})
        assert headers["x-llm-attempts"] == "1" and len(primary.requests) == 1
    if fault == "silent":
        await asyncio.sleep(0.1)
        assert primary.cancelled >= 1            # the abandoned request was cancelled, not left hanging


async def test_retries_same_target_with_backoff_then_falls_back(aiohttp_server, start_proxy):
    primary, backup = await _fake(aiohttp_server), await _fake(aiohttp_server)
    primary.mode = "error500"
    server = await start_proxy(_cfg(openai_provider(primary), openai_provider(backup),
                                    routing={"retries": 2, "backoff_base": 0.001}))
    status, headers, _ = await _post(server, {"model": "m", "messages": MSG})
    assert status == 200
    assert len(primary.requests) == 3 and headers["x-llm-attempts"] == "4"


async def test_4xx_is_not_retried_nor_falls_back(aiohttp_server, start_proxy):
    primary, backup = await _fake(aiohttp_server), await _fake(aiohttp_server)
    primary.mode = "error400"
    server = await start_proxy(_cfg(openai_provider(primary), openai_provider(backup),
                                    routing={"retries": 2}))
    status, headers, _ = await _post(server, {"model": "m", "messages": MSG})
    assert status == 400 and headers["x-llm-attempts"] == "1"
    assert len(primary.requests) == 1 and not backup.requests


async def test_midstream_cut_is_never_retried(aiohttp_server, start_proxy):
    primary, backup = await _fake(aiohttp_server), await _fake(aiohttp_server)
    primary.mode = "reset_midstream"
    primary.reply = "one two three four five six"
    server = await start_proxy(_cfg(openai_provider(primary), openai_provider(backup)))
    status, _, raw = await _post(server, {"model": "m", "messages": MSG, "stream": True})
    assert status == 200
    assert raw.rstrip().endswith(b"}") and b"event: error" in raw
    assert not backup.requests
    text = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in raw.split(b"\n") if line.startswith(b"data: {") and b'"choices"' in line)
    assert text.split() == ["one", "two", "three"]          # no duplicated text from a second attempt


async def test_fallbacks_none_header(aiohttp_server, start_proxy):
    backup = await _fake(aiohttp_server)
    server = await start_proxy(_cfg(DEAD, openai_provider(backup)))
    status, headers, _ = await _post(server, {"model": "m", "messages": MSG}, {"x-llm-fallbacks": "none"})
    assert status == 502 and headers["x-llm-attempts"] == "1" and not backup.requests


async def test_breaker_opens_skips_dead_target_then_half_opens(aiohttp_server, start_proxy):
    primary = await _fake(aiohttp_server)
    primary.mode = "error500"
    cfg = make_config(providers={"primary": openai_provider(primary)},
                      models=[{"name": "m", "targets": [{"provider": "primary", "model": "p"}]}],
                      routing={"retries": 0, "breaker": {"failures": 3, "cooldown": 0.3}})
    server = await start_proxy(cfg)
    for _ in range(3):
        assert (await _post(server, {"model": "m", "messages": MSG}))[0] == 502
    status, _, raw = await _post(server, {"model": "m", "messages": MSG})
    assert status == 503 and len(primary.requests) == 3          # answered without calling the target
    assert "cooling down" in orjson.loads(raw)["error"]["message"]
    async with aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/admin/providers"), headers=AUTH) as r:
            targets = (await r.json())["data"][0]["targets"]
            assert targets["primary/p"]["state"] == "open"
        async with s.get(server.make_url("/ready")) as r:
            assert (await r.json())["providers"]["primary/p"] == "open"
    await asyncio.sleep(0.35)
    primary.mode = "ok"
    assert (await _post(server, {"model": "m", "messages": MSG}))[0] == 200      # the half-open probe
    assert len(primary.requests) == 4
    assert (await _post(server, {"model": "m", "messages": MSG}))[0] == 200


async def test_breaker_open_primary_goes_straight_to_backup(aiohttp_server, start_proxy):
    backup = await _fake(aiohttp_server)
    server = await start_proxy(_cfg(DEAD, openai_provider(backup),
                                    routing={"retries": 0, "breaker": {"failures": 2, "cooldown": 30}}))
    attempts = [(await _post(server, {"model": "m", "messages": MSG}))[1]["x-llm-attempts"] for _ in range(4)]
    assert attempts == ["2", "2", "1", "1"]


async def test_context_length_falls_back_to_larger_window(aiohttp_server, start_proxy):
    small, mid, big = [await _fake(aiohttp_server) for _ in range(3)]
    small.mode = "context_length"
    cfg = make_config(
        providers={"small": openai_provider(small), "mid": openai_provider(mid), "big": openai_provider(big)},
        models=[{"name": "m", "targets": [
            {"provider": "small", "model": "s", "context_window": 8000},
            {"provider": "mid", "model": "m", "context_window": 4000},
            {"provider": "big", "model": "b", "context_window": 128000}]}])
    server = await start_proxy(cfg)
    status, headers, _ = await _post(server, {"model": "m", "messages": MSG})
    assert status == 200 and headers["x-llm-provider"] == "big"
    assert not mid.requests                      # a smaller window is skipped
    small.mode = "error400"                      # an ordinary bad request does not fall back
    assert (await _post(server, {"model": "m", "messages": MSG}))[0] == 400
    assert len(big.requests) == 1


async def test_weighted_balancing_follows_weights():
    model = ModelConfig(name="m", strategy="weighted", targets=[
        Target(provider="a", model="x", weight=3, priority=0), Target(provider="b", model="y", weight=1, priority=0),
        Target(provider="c", model="z", priority=1)])
    health, rng = Health(BreakerConfig()), random.Random(7)
    firsts = Counter(ordered(model, health, rng=rng)[0].provider for _ in range(4000))
    assert 0.70 < firsts["a"] / 4000 < 0.80 and firsts["c"] == 0
    assert all(ordered(model, health, rng=rng)[-1].provider == "c" for _ in range(50))


async def test_least_inflight_latency_and_cost_strategies():
    a, b = Target(provider="a", model="x", priority=0), Target(provider="b", model="y", priority=0)
    health = Health(BreakerConfig())
    health.of(a).inflight, health.of(b).inflight = 5, 1
    health.of(a).ewma_ms, health.of(b).ewma_ms = 10.0, 90.0
    mk = lambda s: ModelConfig(name="m", strategy=s, targets=[a, b])  # noqa: E731
    assert ordered(mk("least_inflight"), health)[0] is b
    assert ordered(mk("latency"), health)[0] is a
    prices = {"a": 2.0, "b": 0.5}
    assert ordered(mk("cost"), health, price=lambda t: prices[t.provider])[0] is b


async def test_aliases_versions_and_deprecation(start_proxy, caplog):
    cfg = make_config(
        providers={"local": {"type": "mock"}},
        models=[{"name": "gpt-4o", "version": "2024-11-20", "default": True, "aliases": ["gpt4"],
                 "targets": [{"provider": "local", "model": "v2"}]},
                {"name": "gpt-4o", "version": "2024-08-06", "deprecated": "use gpt-4o@2024-11-20",
                 "targets": [{"provider": "local", "model": "v1"}]}])
    server = await start_proxy(cfg)
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    for name, upstream in [("gpt-4o", "v2"), ("gpt4", "v2"), ("gpt-4o@2024-11-20", "v2"),
                           ("gpt-4o@2024-08-06", "v1")]:
        raw = await client.chat.completions.with_raw_response.create(model=name, messages=MSG)
        assert raw.headers["x-llm-upstream-model"] == upstream, name
    assert raw.headers["x-llm-deprecated"] == "use gpt-4o@2024-11-20"
    assert any("deprecated" in r.getMessage() for r in caplog.records)
    ids = {m.id async for m in client.models.list()}
    assert {"gpt-4o", "gpt4", "gpt-4o@2024-11-20", "gpt-4o@2024-08-06"} <= ids
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-4o@1999-01-01", messages=MSG)


async def test_upstream_429_passes_retry_after_and_cools_the_target(aiohttp_server, start_proxy):
    only = await _fake(aiohttp_server)
    only.mode = "error429"
    server = await start_proxy(make_config(providers={"only": openai_provider(only)},
                                           models=[{"name": "m", "targets": [{"provider": "only", "model": "x"}]}],
                                           routing={"rate_limit_wait": 0}))     # no waiting: see test_ratelimit_upstream
    status, headers, raw = await _post(server, {"model": "m", "messages": MSG})
    assert status == 429 and headers["retry-after"] == "1"
    assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    status, headers, _ = await _post(server, {"model": "m", "messages": MSG})
    assert status == 429 and len(only.requests) == 1          # cooling down: not called again, still a 429
    assert headers["retry-after"] == "1"
