"""POST /v1/messages with the official anthropic SDK: converted to chat completions for an OpenAI upstream
and the mock, passed through byte for byte to an Anthropic upstream; Anthropic's error envelope; one usage
event per call however it ends."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import anthropic
import orjson
import pytest

from tests.conftest import MASTER
from tests.ingress_helpers import ADMIN, hang_up_after, ingress_config, usage_events
from tests.keys_helpers import create_key

USER = [{"role": "user", "content": "Say hello"}]
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def _client(server, key: str = MASTER) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key=key, max_retries=0)


@pytest.fixture
async def proxy(start_proxy, fake_openai, fake_anthropic, tmp_path):
    return await start_proxy(ingress_config(fake_openai, fake_anthropic, tmp_path))


async def test_create_and_stream_converted_to_an_openai_upstream(proxy, fake_openai):
    client = _client(proxy)
    msg = await client.messages.create(model="gpt", max_tokens=64, messages=USER, system="Be brief.")
    assert msg.type == "message" and msg.role == "assistant" and msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text" and msg.content[0].text == fake_openai.reply
    assert msg.usage.input_tokens == 11 and msg.usage.output_tokens == len(fake_openai.reply.split())
    sent = fake_openai.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["max_tokens"] == 64
    events = []
    async with client.messages.stream(model="gpt", max_tokens=64, messages=USER) as stream:
        async for ev in stream:
            events.append(ev.type)
            if ev.type == "message_start":
                assert ev.message.usage.input_tokens > 0          # counted from the prompt, never 0
        final = await stream.get_final_message()
    assert final.content[0].text == fake_openai.reply
    assert final.usage.input_tokens == 11 and final.usage.output_tokens == len(fake_openai.reply.split())
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events and "message_delta" in events
    evs = await usage_events(proxy, 2)
    assert [e["request_type"] for e in evs] == ["messages", "messages"]
    assert all(e["tokens"]["prompt"] == 11 and not e["estimated"] for e in evs)


async def test_tool_use_round_trip_json_and_stream(proxy, fake_openai):
    fake_openai.mode = "tools"
    client = _client(proxy)
    msg = await client.messages.create(model="gpt", max_tokens=64, messages=USER, tools=[WEATHER],
                                       tool_choice={"type": "any"})
    assert msg.stop_reason == "tool_use"
    [use] = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    sent = fake_openai.requests[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "required"
    async with client.messages.stream(model="gpt", max_tokens=64, messages=USER, tools=[WEATHER]) as stream:
        final = await stream.get_final_message()
    [use2] = [b for b in final.content if b.type == "tool_use"]
    assert use2.input == {"city": "Paris"} and final.stop_reason == "tool_use"
    fake_openai.mode = "ok"
    turn2 = [*USER, {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name,
                                                       "input": use.input}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
    msg = await client.messages.create(model="gpt", max_tokens=64, messages=turn2, tools=[WEATHER])
    assert msg.content[0].text == fake_openai.reply
    chat = fake_openai.requests[-1]["messages"]
    assert chat[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert chat[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


async def test_an_image_reaches_the_openai_upstream_and_the_mock_answers(proxy, fake_openai):
    client = _client(proxy)
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
               {"type": "text", "text": "What is this?"}]
    await client.messages.create(model="gpt", max_tokens=32, messages=[{"role": "user", "content": content}])
    parts = fake_openai.requests[-1]["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    msg = await client.messages.create(model="mock", max_tokens=5, messages=USER)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 5


async def test_passthrough_to_anthropic_keeps_the_body_and_the_stream_bytes(proxy, fake_anthropic):
    # Odd spacing, key order and a thinking block with its signature: only the model value may change.
    raw = (b'{"messages": [{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"thinking",'
           b'"thinking":"hmm","signature":"c2lnbmF0dXJl"},{"type":"text","text":"ok"}]},{"role":"user",'
           b'"content":"again"}], "max_tokens":  50,"model" :"claude", "metadata":{"user_id":"u1"},'
           b'"system":[{"type":"text","text":"sys","cache_control":{"type":"ephemeral"}}]}')
    headers = {**ADMIN, "content-type": "application/json", "anthropic-version": "2023-06-01",
               "anthropic-beta": "interleaved-thinking-2025-05-14"}
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.make_url("/v1/messages"), data=raw, headers=headers) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert fake_anthropic.raw[-1] == raw.replace(b'"model" :"claude"', b'"model" :"claude-haiku-4-5"')
        sent = fake_anthropic.headers[-1]
        assert sent["anthropic-beta"] == "interleaved-thinking-2025-05-14" and MASTER not in str(sent)
        assert body["content"][0]["text"] == fake_anthropic.reply and body["usage"]["input_tokens"] == 21
        streamed = raw.replace(b'"max_tokens":  50', b'"max_tokens":  50, "stream": true')
        async with s.post(proxy.make_url("/v1/messages"), data=streamed, headers=headers) as r:
            got = await r.read()
    assert got == fake_anthropic.streamed                       # relayed byte for byte
    client = _client(proxy)
    async with client.messages.stream(model="claude", max_tokens=64, messages=USER) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == fake_anthropic.reply
    evs = await usage_events(proxy, 3)
    assert {e["request_type"] for e in evs} == {"messages"}
    assert all(e["tokens"]["prompt"] == 21 and e["tokens"]["completion"] == 6 and not e["estimated"] for e in evs)
    # a chat-completions client of the same model still gets the converted path
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.make_url("/v1/chat/completions"), headers=ADMIN,
                          json={"model": "claude", "messages": USER}) as r:
            assert (await r.json())["choices"][0]["message"]["content"] == fake_anthropic.reply


async def test_errors_in_anthropics_envelope(proxy, fake_anthropic):
    with pytest.raises(anthropic.AuthenticationError) as e:
        await _client(proxy, "sk-wrong").messages.create(model="gpt", max_tokens=5, messages=USER)
    assert e.value.body["error"]["type"] == "authentication_error"
    only_mock = (await create_key(proxy, models=["mock"]))["key"]
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        await _client(proxy, only_mock).messages.create(model="gpt", max_tokens=5, messages=USER)
    assert e.value.body["error"]["type"] == "permission_error"
    assert (await _client(proxy, only_mock).messages.create(model="mock", max_tokens=5, messages=USER)).content
    with pytest.raises(anthropic.BadRequestError) as e:
        await _client(proxy).messages.create(model="gpt", max_tokens=0, messages=USER)
    assert e.value.body["error"]["type"] == "invalid_request_error" and "max_tokens" in e.value.message
    with pytest.raises(anthropic.NotFoundError) as e:
        await _client(proxy).messages.create(model="nope", max_tokens=5, messages=USER)
    assert e.value.body["error"]["type"] == "not_found_error"
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.make_url("/v1/messages"), data=b"{not json", headers=ADMIN) as r:
            body = await r.json()
            assert r.status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    fake_anthropic.mode = "error529"
    with pytest.raises(anthropic.InternalServerError) as e:
        await _client(proxy).messages.create(model="claude", max_tokens=5, messages=USER)
    assert e.value.body["error"]["type"] == "overloaded_error"


async def test_count_tokens(proxy):
    res = await _client(proxy).messages.count_tokens(model="gpt", messages=USER, system="Be brief.")
    assert res.input_tokens > 0
    only_mock = (await create_key(proxy, models=["mock"]))["key"]
    with pytest.raises(anthropic.PermissionDeniedError):
        await _client(proxy, only_mock).messages.count_tokens(model="gpt", messages=USER)


@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
async def test_a_cut_upstream_stream_ends_with_an_error_event_and_one_usage_event(
        proxy, fake_openai, fake_anthropic, upstream):
    fake_openai.mode, fake_anthropic.mode = "reset_midstream", "stream_error"
    fake_openai.reply = "a b c d e f g h"
    client = _client(proxy)
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(model="gpt" if upstream == "openai" else "claude", max_tokens=64,
                                          messages=USER) as stream:
            async for _ in stream:
                pass
    [ev] = await usage_events(proxy)
    assert ev["request_type"] == "messages" and ev["status"] >= 500


async def test_a_client_that_hangs_up_leaves_one_event_and_frees_its_slot(start_proxy, fake_openai,
                                                                          fake_anthropic, tmp_path):
    proxy = await start_proxy(ingress_config(fake_openai, fake_anthropic, tmp_path, mock_delay_ms=30,
                                             limits={"models": {"mock": {"max_concurrency": 1}}}))
    body = {"model": "mock", "max_tokens": 16, "stream": True, "messages": USER}
    got = await hang_up_after(proxy, "/v1/messages", body, b"content_block_delta")
    assert b"message_start" in got
    [ev] = await usage_events(proxy)
    assert ev["request_type"] == "messages" and ev["status"] == 499
    for _ in range(40):                          # the slot is free again: the next call is admitted
        msg = None
        try:
            msg = await _client(proxy).messages.create(model="mock", max_tokens=2, messages=USER)
        except anthropic.RateLimitError:
            await asyncio.sleep(0.05)
        if msg is not None:
            break
    assert msg is not None and msg.usage.output_tokens == 2
    assert orjson.loads(orjson.dumps(msg.model_dump()))["type"] == "message"


async def test_a_converted_answer_is_cached_and_a_hit_is_rendered(proxy):
    client = _client(proxy)
    kw = {"model": "mock", "max_tokens": 8, "messages": USER, "extra_body": {"cache": True}}
    first = await client.messages.with_raw_response.create(**kw)
    hit = await client.messages.with_raw_response.create(**kw)
    assert first.headers["x-llm-cache"] == "MISS" and hit.headers["x-llm-cache"] == "HIT"
    text = (await first.parse()).content[0].text
    assert (await hit.parse()).content[0].text == text
    async with client.messages.stream(**kw) as stream:         # the JSON entry replayed as a stream
        final = await stream.get_final_message()
    assert final.content[0].text == text and final.usage.output_tokens == 8
    evs = await usage_events(proxy, 3)
    assert sorted(e["metadata"]["cached"] for e in evs) == [False, True, True]
