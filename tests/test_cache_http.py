"""The response cache end to end over HTTP, on both stores: hits skip the provider, controls, streams."""

from __future__ import annotations

import asyncio

import openai
import orjson
import pytest

from proxy.gateway import GATEWAY
from tests.cache_helpers import cache_config, drop_prefix, new_prefix, post, redis_or_skip, stream_text
from tests.conftest import MASTER

MSG = [{"role": "user", "content": "What is the cache?"}]


@pytest.fixture(params=["memory", "redis"])
async def cached(request, start_proxy, fake_openai):
    """(start(**cache_config) -> server, fake upstream) on the backend of the parameter."""
    backend, prefix, client = request.param, new_prefix(), None
    if backend == "redis":
        client = await redis_or_skip()

    async def start(**cache):
        return await start_proxy(cache_config(fake_openai, backend, prefix, **cache))
    start.backend, start.prefix = backend, prefix
    yield start
    if client is not None:
        await drop_prefix(client, prefix)
        await client.aclose()


async def test_second_identical_request_is_a_hit_that_never_reaches_the_provider(cached, fake_openai):
    server = await cached(mode="all")
    body = {"model": "gpt", "messages": MSG, "temperature": 0, "user": "alice"}
    s1, h1, raw1 = await post(server, body)
    assert (s1, h1["x-llm-cache"]) == (200, "MISS"), raw1
    body2 = {"messages": MSG, "user": "bob", "temperature": 0, "model": "gpt"}   # other order, other user
    s2, h2, raw2 = await post(server, body2)
    assert (s2, h2["x-llm-cache"]) == (200, "HIT")
    assert raw2 == raw1
    assert len(fake_openai.requests) == 1
    assert h2["x-llm-cache-key"] == h1["x-llm-cache-key"] and len(h2["x-llm-cache-key"]) == 64
    assert "What is the cache" not in h2["x-llm-cache-key"]
    assert h2["x-llm-provider"] == "up" and h2["x-llm-upstream-model"] == "gpt-4o-mini"
    stats = server.app[GATEWAY].cache.stats
    assert stats.total("hit") == 1 and stats.total("miss") == 1 and stats.total("store") == 1


async def test_fields_that_change_the_answer_change_the_key(cached, fake_openai):
    server = await cached(mode="all")
    base = {"model": "gpt", "messages": MSG}
    variants = [base, {**base, "temperature": 0.5}, {**base, "max_tokens": 5}, {**base, "seed": 1},
                {**base, "response_format": {"type": "json_object"}}, {**base, "model": "gpt-b"},
                {**base, "tools": [{"type": "function", "function": {"name": "f"}}]}]
    for v in variants:
        status, headers, _ = await post(server, v)
        assert (status, headers["x-llm-cache"]) == (200, "MISS"), v
    assert len(fake_openai.requests) == len(variants)


async def test_opt_in_mode_caches_only_requests_that_ask(cached, fake_openai):
    server = await cached()                                   # default mode: opt_in
    body = {"model": "gpt", "messages": MSG}
    assert (await post(server, body))[1]["x-llm-cache"] == "BYPASS"
    assert (await post(server, body))[1]["x-llm-cache"] == "BYPASS"
    assert (await post(server, {**body, "cache": True}))[1]["x-llm-cache"] == "MISS"
    assert "cache" not in fake_openai.requests[-1]             # the proxy's own field never goes upstream
    assert (await post(server, {**body, "options": {"cache": True}}))[1]["x-llm-cache"] == "HIT"
    assert len(fake_openai.requests) == 3
    status, _, raw = await post(server, {**body, "cache": "yes"})
    assert status == 400 and orjson.loads(raw)["error"]["param"] == "cache"


async def test_request_can_opt_out_in_mode_all(cached, fake_openai):
    server = await cached(mode="all")
    body = {"model": "gpt", "messages": MSG, "cache": False}
    for _ in range(2):
        assert (await post(server, body))[1]["x-llm-cache"] == "BYPASS"
    assert len(fake_openai.requests) == 2


async def test_no_store_leaves_no_entry(cached, fake_openai):
    server = await cached(mode="all")
    body = {"model": "gpt", "messages": MSG}
    _, h1, _ = await post(server, body, {"Cache-Control": "no-store"})
    assert h1["x-llm-cache"] == "MISS"
    _, h2, _ = await post(server, body)
    assert h2["x-llm-cache"] == "MISS"
    assert len(fake_openai.requests) == 2
    assert server.app[GATEWAY].cache.stats.total("store") == 1


async def test_no_cache_skips_the_lookup_but_refreshes_the_entry(cached, fake_openai):
    server = await cached(mode="all")
    body = {"model": "gpt", "messages": MSG}
    await post(server, body)
    fake_openai.reply = "A fresher answer"
    _, h, raw = await post(server, body, {"Cache-Control": "no-cache"})
    assert h["x-llm-cache"] == "MISS" and b"fresher" in raw
    _, h, raw = await post(server, body)
    assert h["x-llm-cache"] == "HIT" and b"fresher" in raw
    assert len(fake_openai.requests) == 2
    assert (await post(server, body, {"Cache-Control": "no-cache, no-store"}))[1]["x-llm-cache"] == "BYPASS"


async def test_ttl_header_and_max_age(cached, fake_openai):
    server = await cached(mode="all")
    body = {"model": "gpt", "messages": MSG}
    await post(server, body, {"x-llm-cache-ttl": "0.3"})
    assert (await post(server, body))[1]["x-llm-cache"] == "HIT"
    await asyncio.sleep(0.45)
    assert (await post(server, body))[1]["x-llm-cache"] == "MISS"          # expired; stored again (1h)
    _, h, _ = await post(server, body, {"Cache-Control": "max-age=0"})     # nothing is young enough
    assert h["x-llm-cache"] == "MISS"
    assert (await post(server, body, {"Cache-Control": "max-age=60"}))[1]["x-llm-cache"] == "HIT"
    assert (await post(server, body, {"x-llm-cache-ttl": "soon"}))[0] == 400


async def test_errors_and_n_above_one_are_not_cached(cached, fake_openai):
    server = await cached(mode="all")
    body = {"model": "gpt", "messages": MSG}
    fake_openai.mode = "error400"
    assert (await post(server, body))[0] == 400
    fake_openai.mode = "ok"
    assert (await post(server, body))[1]["x-llm-cache"] == "MISS"
    many = {**body, "n": 2}
    assert (await post(server, many))[1]["x-llm-cache"] == "BYPASS"
    assert (await post(server, many))[1]["x-llm-cache"] == "BYPASS"
    assert len(fake_openai.requests) == 4


@pytest.mark.parametrize("fault", ["no_done", "reset_midstream"])
async def test_truncated_streams_are_not_cached(cached, fake_openai, fault):
    server = await cached(mode="all")
    body = {"model": "gpt", "messages": MSG, "stream": True}
    fake_openai.mode = fault
    status, _, raw = await post(server, body)
    assert status == 200 and b"event: error" in raw
    fake_openai.mode = "ok"
    _, h, raw = await post(server, body)
    assert h["x-llm-cache"] == "MISS" and raw.endswith(b"data: [DONE]\n\n")
    assert server.app[GATEWAY].cache.stats.total("store") == 1


async def test_streamed_hit_replays_the_original_stream_byte_for_byte(cached, fake_openai):
    server = await cached(mode="all")
    body = {"model": "gpt", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    _, h1, raw1 = await post(server, body)
    _, h2, raw2 = await post(server, body)
    assert (h1["x-llm-cache"], h2["x-llm-cache"]) == ("MISS", "HIT")
    assert h2["Content-Type"].startswith("text/event-stream")
    assert raw2 == raw1
    assert b'"usage":{"prompt_tokens":11' in raw2 and raw2.startswith(b": keep-alive\n\n")
    assert len(fake_openai.requests) == 1
    # the same stream without usage: the usage chunk is left out, everything else identical
    _, h3, raw3 = await post(server, {**body, "stream_options": None})
    assert h3["x-llm-cache"] == "HIT" and b'"usage"' not in raw3
    assert stream_text(raw3) == fake_openai.reply
    events = [e + b"\n\n" for e in raw1.split(b"\n\n") if e]
    assert raw3 == b"".join(e for e in events if b'"usage"' not in e)


async def test_stream_stored_without_usage_gets_a_usage_chunk_when_asked(cached, fake_openai):
    server = await cached(mode="all")
    body = {"model": "gpt", "messages": MSG, "stream": True}
    _, _, raw1 = await post(server, body)
    assert b'"usage"' not in raw1
    _, h, raw2 = await post(server, {**body, "stream_options": {"include_usage": True}})
    assert h["x-llm-cache"] == "HIT"
    assert raw2.startswith(raw1[: -len(b"data: [DONE]\n\n")])
    usage_event = raw2[len(raw1) - len(b"data: [DONE]\n\n"):-len(b"data: [DONE]\n\n")]
    assert orjson.loads(usage_event[6:])["usage"] == {"prompt_tokens": 11, "completion_tokens": 5,
                                                      "total_tokens": 16}


async def test_stream_and_json_hits_are_converted_both_ways(cached, fake_openai):
    server = await cached(mode="all")
    url = str(server.make_url("/v1"))
    client = openai.AsyncOpenAI(base_url=url, api_key=MASTER, max_retries=0)
    # stored as a stream, read back as JSON
    s_msg = [{"role": "user", "content": "stream first"}]
    chunks = [c async for c in await client.chat.completions.create(model="gpt", messages=s_msg, stream=True)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_openai.reply
    got = await client.chat.completions.with_raw_response.create(model="gpt", messages=s_msg)
    assert got.headers["x-llm-cache"] == "HIT"
    answer = got.parse()
    assert answer.choices[0].message.content == fake_openai.reply
    assert answer.choices[0].finish_reason == "stop" and answer.usage.total_tokens == 16
    # stored as JSON, read back as a stream (with usage)
    j_msg = [{"role": "user", "content": "json first"}]
    await client.chat.completions.create(model="gpt", messages=j_msg)
    stream = await client.chat.completions.create(model="gpt", messages=j_msg, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_openai.reply
    assert chunks[-1].usage.total_tokens == 16 and chunks[-1].choices == []
    assert len(fake_openai.requests) == 2
    await client.close()


async def test_hit_is_accounted_as_cached_with_the_stored_usage(cached, fake_openai):
    server = await cached(mode="all")
    seen = []
    server.app[GATEWAY].observers.append(seen.append)
    body = {"model": "gpt", "messages": MSG}
    await post(server, body)
    await post(server, body)
    miss, hit = seen
    assert miss.cache == "miss" and hit.cache == "hit"
    assert hit.usage == miss.usage and hit.usage.total_tokens == 16
    assert hit.target.provider == "up" and hit.target.model == "gpt-4o-mini"


async def test_embeddings_are_cached(cached, fake_openai):
    server = await cached(mode="all")
    body = {"model": "gpt", "input": ["a", "b"]}
    _, h1, raw1 = await post(server, body, path="/v1/embeddings")
    _, h2, raw2 = await post(server, body, path="/v1/embeddings")
    assert (h1["x-llm-cache"], h2["x-llm-cache"], raw1) == ("MISS", "HIT", raw2)
    assert len(fake_openai.requests) == 1
