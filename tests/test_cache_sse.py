"""Stream <-> JSON conversion of cached answers, and streams cut short by the client."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from proxy.cache import sse
from proxy.context import Usage
from proxy.gateway import GATEWAY
from tests.cache_helpers import AUTH, cache_config, new_prefix, post


def chunk(delta: dict, finish: str | None = None, index: int = 0) -> bytes:
    return b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
                                     "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}) + b"\n\n"


TOOL_STREAM = [
    b": keep-alive\n\n",
    chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({}, "tool_calls"),
    b"data: [DONE]\n\n",
]


def test_split_events_keeps_framing():
    data = b"".join(TOOL_STREAM)
    assert sse.split_events(data) == TOOL_STREAM
    crlf = b"data: {}\r\n\r\ndata: [DONE]\r\n\r\n"
    assert b"".join(sse.split_events(crlf)) == crlf and sse.is_done(sse.split_events(crlf)[-1])


def test_assemble_merges_tool_call_deltas():
    body = orjson.loads(sse.assemble(TOOL_STREAM, Usage(prompt_tokens=3, completion_tokens=4)))
    assert body["object"] == "chat.completion" and body["id"] == "c1" and body["created"] == 5
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"] is None
    assert msg["tool_calls"] == [{"id": "call_1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"]["total_tokens"] == 7


def test_synthesised_stream_assembles_back_to_the_same_answer():
    original = sse.assemble(TOOL_STREAM, Usage(prompt_tokens=3, completion_tokens=4))
    assert original is not None
    events, usage_event = sse.synthesise(original)
    assert sse.is_done(events[-1])
    assert usage_event is not None and orjson.loads(usage_event[6:])["choices"] == []
    again = sse.assemble(events, Usage(prompt_tokens=3, completion_tokens=4))
    assert again is not None and orjson.loads(again) == orjson.loads(original)


async def test_a_stream_the_client_abandoned_is_not_stored(start_proxy, fake_openai):
    server = await start_proxy(cache_config(fake_openai, "memory", new_prefix(), mode="all"))
    body = {"model": "gpt", "messages": [{"role": "user", "content": "long story"}], "stream": True}
    fake_openai.delay = 0.05
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/v1/chat/completions"), data=orjson.dumps(body), headers=AUTH) as r:
            assert r.headers["x-llm-cache"] == "MISS"
            await r.content.readany()
            r.close()                                          # the client leaves mid-stream
    await asyncio.sleep(0.5)                                   # the upstream would have finished by now
    stats = server.app[GATEWAY].cache.stats
    assert stats.total("store") == 0 and stats.total("miss") == 1
    fake_openai.delay = 0
    _, h, raw = await post(server, body)
    assert h["x-llm-cache"] == "MISS" and raw.endswith(b"data: [DONE]\n\n")
    _, h, _ = await post(server, body)
    assert h["x-llm-cache"] == "HIT"
