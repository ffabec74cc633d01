"""The Ollama native adapter: mapping details at adapter level, then end to end through the proxy with the
official openai SDK against a fake Ollama that speaks NDJSON in odd-sized pieces."""

from __future__ import annotations

import aiohttp
import openai
import orjson
import pytest

from proxy.config import Target
from proxy.context import ChatCall
from proxy.errors import InvalidRequest, UpstreamError
from proxy.providers.registry import provider_class
from proxy.upstream import HttpTransport
from tests.conftest import MASTER, make_config
from tests.fakes.ollama_upstream import FakeOllama

MSG = [{"role": "user", "content": "why is the sky blue?"}]
TOOLS = [{"type": "function", "function": {"name": name, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    for name in ("get_weather", "get_time")]
UPSTREAM_KEY = "ollama-gateway-secret"


def _provider(**extra):
    cfg = make_config(providers={"o": {"type": "ollama", "base_url": "http://127.0.0.1:11434", **extra}},
                      models=[{"name": "llama", "targets": [{"provider": "o", "model": "llama3.2"}]}])
    pc = cfg.providers["o"]
    return provider_class(pc.type)(pc)


def _wire(body, stream=False, endpoint="chat.completions", **extra):
    p = _provider(**extra)
    wire = p.to_wire(ChatCall(body=body, model="llama", stream=stream, endpoint=endpoint),
                     Target(provider="o", model="llama3.2"))
    return wire, orjson.loads(wire.body)


@pytest.fixture
async def fake_ollama(aiohttp_server) -> FakeOllama:
    fake = FakeOllama()
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
async def proxy(start_proxy, fake_ollama):
    cfg = make_config(
        providers={"ol": {"type": "ollama", "base_url": str(fake_ollama.server.make_url("")).rstrip("/"),
                          "api_key": UPSTREAM_KEY, "options": {"num_ctx": 4096}, "keep_alive": "5m",
                          "timeouts": {"first_byte": 2, "idle": 2, "total": 10}}},
        models=[{"name": "llama", "targets": [{"provider": "ol", "model": "llama3.2"}]},
                {"name": "embed", "targets": [{"provider": "ol", "model": "all-minilm"}]}])
    return await start_proxy(cfg)


def _client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)


# -- adapter level --

def test_https_image_url_is_rejected_with_param():
    body = {"model": "llama", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    with pytest.raises(InvalidRequest) as e:
        _wire(body)
    assert e.value.status == 400
    assert e.value.param == "messages[0].content[1].image_url"


def test_bad_tool_call_arguments_are_a_400():
    body = {"model": "llama", "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}
    with pytest.raises(InvalidRequest) as e:
        _wire(body)
    assert e.value.param == "messages[0].tool_calls[0].function.arguments"


def test_unsupported_params_drop_or_reject():
    body = {"model": "llama", "messages": MSG, "logit_bias": {"1": 2}, "tool_choice": "required", "n": 1}
    wire, sent = _wire(body)
    assert sorted(wire.dropped) == ["logit_bias", "tool_choice"]      # n=1 is what Ollama does anyway
    assert "logit_bias" not in sent and "tool_choice" not in sent
    with pytest.raises(InvalidRequest) as e:
        _wire(body, unsupported_params="reject")
    assert e.value.param == "logit_bias" and e.value.code == "unsupported_parameter"


def test_ollama_options_must_be_an_object():
    with pytest.raises(InvalidRequest) as e:
        _wire({"model": "llama", "messages": MSG, "ollama_options": [1]})
    assert e.value.param == "ollama_options"


def test_embeddings_reject_token_arrays_and_map_options():
    with pytest.raises(InvalidRequest):
        _wire({"model": "embed", "input": [[1, 2, 3]]}, endpoint="embeddings")
    wire, sent = _wire({"model": "embed", "input": "hi", "truncate": False, "user": "u"}, endpoint="embeddings",
                       options={"num_ctx": 512}, keep_alive=0)
    assert wire.url.endswith("/api/embed")
    assert sent == {"model": "llama3.2", "input": "hi", "truncate": False, "options": {"num_ctx": 512}, "keep_alive": 0}
    assert wire.dropped == []


def test_embeddings_base64_is_little_endian_float32():
    p = _provider()
    call = ChatCall(body={"model": "embed", "input": "x", "encoding_format": "base64"}, model="embed", stream=False,
                    endpoint="embeddings")
    out, usage = p.from_wire(200, orjson.dumps({"model": "m", "embeddings": [[1.0, -2.0]], "prompt_eval_count": 2}),
                             call, Target(provider="o", model="m"))
    assert orjson.loads(out)["data"][0]["embedding"] == "AACAPwAAAMA="
    assert usage.prompt_tokens == 2


def test_thinking_becomes_reasoning_content_and_missing_tool_ids_are_generated():
    p = _provider()
    call = ChatCall(body={"model": "llama", "messages": MSG}, model="llama", stream=False)
    wire = {"model": "qwen3", "message": {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [
        {"function": {"name": "f", "arguments": {"a": 1}}}]}, "done": True, "done_reason": "stop"}
    out, _ = p.from_wire(200, orjson.dumps(wire), call, Target(provider="o", model="qwen3"))
    msg = orjson.loads(out)["choices"][0]["message"]
    assert msg["reasoning_content"] == "hmm"
    assert msg["tool_calls"][0]["id"].startswith("call_") and len(msg["tool_calls"][0]["id"]) > 8
    assert msg["tool_calls"][0]["function"]["arguments"] == '{"a":1}'


def test_non_json_error_body_and_in_stream_error_line():
    p = _provider()
    err = p.error_from_wire(404, b"404 page not found", {})
    assert err.status == 404 and err.message == "404 page not found"
    t = p.new_stream(ChatCall(body={"model": "llama", "messages": MSG}, model="llama", stream=True),
                     Target(provider="o", model="llama3.2"))
    t.feed(b'{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n{"err')
    with pytest.raises(UpstreamError) as e:
        t.feed(b'or":"out of memory"}\n')
    assert e.value.message == "out of memory"


# -- end to end through the proxy with the openai SDK --

async def test_plain_chat_maps_options_and_never_forwards_the_client_key(proxy, fake_ollama):
    client = _client(proxy)
    raw = await client.chat.completions.with_raw_response.create(
        model="llama", messages=MSG, temperature=0.3, max_tokens=50, stop="END",
        extra_body={"ollama_options": {"top_k": 5}, "keep_alive": "1h"})
    res = raw.parse()
    assert res.choices[0].message.content == fake_ollama.reply
    assert res.choices[0].finish_reason == "stop"
    assert (res.usage.prompt_tokens, res.usage.completion_tokens, res.usage.total_tokens) == (12, 5, 17)
    assert raw.headers["x-llm-provider"] == "ol"
    sent = fake_ollama.requests[-1]
    assert sent["stream"] is False and sent["model"] == "llama3.2"
    assert sent["options"] == {"num_ctx": 4096, "temperature": 0.3, "num_predict": 50, "stop": ["END"], "top_k": 5}
    assert sent["keep_alive"] == "1h"
    headers = fake_ollama.headers[-1]
    assert headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert MASTER not in str(headers)


async def test_stream_with_include_usage(proxy, fake_ollama):
    fake_ollama.piece = 5
    stream = await _client(proxy).chat.completions.create(model="llama", messages=MSG, stream=True,
                                                          stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == fake_ollama.reply
    assert finish == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 5)
    assert fake_ollama.requests[-1]["stream"] is True
    assert fake_ollama.requests[-1]["keep_alive"] == "5m"         # the provider's default


async def test_stream_without_include_usage_has_no_usage_chunk_and_ends_done(proxy, fake_ollama):
    fake_ollama.mode = "length"
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.make_url("/v1/chat/completions"), headers={"Authorization": f"Bearer {MASTER}"},
                          json={"model": "llama", "messages": MSG, "stream": True}) as r:
            assert r.status == 200
            raw = await r.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in raw
    assert b'"finish_reason":"length"' in raw


async def test_tool_calls_round_trip(proxy, fake_ollama):
    fake_ollama.mode = "tools"
    client = _client(proxy)
    res = await client.chat.completions.create(model="llama", messages=MSG, tools=TOOLS)
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert orjson.loads(calls[1].function.arguments) == {"city": "Paris", "n": 1}
    assert fake_ollama.requests[-1]["tools"] == TOOLS
    fake_ollama.mode = "ok"
    follow = [*MSG, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"}]
    res2 = await client.chat.completions.create(model="llama", messages=follow, tools=TOOLS)
    assert res2.choices[0].message.content == fake_ollama.reply
    sent = fake_ollama.requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris", "n": 0}   # an object again
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": calls[0].id, "tool_name": "get_weather"}


async def test_streamed_tool_calls(proxy, fake_ollama):
    fake_ollama.mode = "tools"
    stream = await _client(proxy).chat.completions.create(model="llama", messages=MSG, tools=TOOLS, stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for d in chunk.choices[0].delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": "", "name": "", "args": ""})
            c["id"] += d.id or ""
            c["name"] += d.function.name or ""
            c["args"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert orjson.loads(calls[0]["args"]) == {"city": "Paris", "n": 0}
    assert calls[1]["id"] == "call_00000001"


async def test_embeddings_through_the_proxy(proxy, fake_ollama):
    client = _client(proxy)
    res = await client.embeddings.create(model="embed", input=["a", "b"])      # the SDK asks for base64
    assert [d.embedding for d in res.data] == [[0.5, -0.25, 0.0], [0.5, -0.25, 1.0]]
    assert res.usage.prompt_tokens == 6
    assert fake_ollama.requests[-1] == {"model": "all-minilm", "input": ["a", "b"], "options": {"num_ctx": 4096},
                                        "keep_alive": "5m"}
    res = await client.embeddings.create(model="embed", input="a", encoding_format="float")
    assert res.data[0].embedding == [0.5, -0.25, 0.0]


@pytest.mark.parametrize("mode,exc,status", [
    ("error404", openai.NotFoundError, 404), ("error400", openai.BadRequestError, 400),
    ("error429", openai.RateLimitError, 429), ("error500", openai.InternalServerError, 502),
    ("error503", openai.InternalServerError, 503)])
async def test_errors_are_the_right_sdk_exceptions(proxy, fake_ollama, mode, exc, status):
    fake_ollama.mode = mode
    with pytest.raises(exc) as e:
        await _client(proxy).chat.completions.create(model="llama", messages=MSG)
    assert e.value.status_code == status
    assert isinstance(e.value.body, dict) and e.value.body["message"]
    if mode == "error404":
        assert e.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("mode", ["midstream_error", "no_done"])
async def test_broken_streams_raise_in_the_sdk(proxy, fake_ollama, mode):
    fake_ollama.mode = mode
    stream = await _client(proxy).chat.completions.create(model="llama", messages=MSG, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as e:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text.startswith("Hello")
    if mode == "midstream_error":
        assert "error was encountered" in e.value.message


async def test_remote_image_url_is_a_400_through_the_proxy(proxy, fake_ollama):
    with pytest.raises(openai.BadRequestError) as e:
        await _client(proxy).chat.completions.create(model="llama", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
    assert e.value.body["param"] == "messages[0].content[0].image_url"
    assert fake_ollama.requests == []


async def test_health_request_lists_tags(fake_ollama):
    p = _provider(base_url=str(fake_ollama.server.make_url("")).rstrip("/"))
    wire = p.health_request()
    transport = HttpTransport(p.config)
    try:
        resp = await transport.send(wire)
        assert resp.status == 200
        assert orjson.loads(await resp.read())["models"][0]["name"] == "llama3.2:latest"
    finally:
        await transport.close()
