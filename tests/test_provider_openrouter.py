"""OpenRouter end to end: the official openai SDK -> proxy -> fake OpenRouter (tests/fakes/openrouter_upstream.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy.config import Target
from proxy.providers.openrouter import OpenRouterProvider
from tests.conftest import MASTER, make_config
from tests.fakes.openrouter_upstream import FakeOpenRouter

MSG = [{"role": "user", "content": "hi"}]
LLAMA = "meta-llama/llama-3.1-8b-instruct"        # the fake lists no tools/response_format/penalties for it
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture
async def fake(aiohttp_server) -> FakeOpenRouter:
    f = FakeOpenRouter()
    f.server = await aiohttp_server(f.app)
    return f


def _provider(fake: FakeOpenRouter, **extra: Any) -> dict[str, Any]:
    return {"type": "openrouter", "base_url": str(fake.server.make_url("/api/v1")), "api_key": "sk-or-upstream",
            "referer": "https://app.example", "title": "Example App",
            "timeouts": {"first_byte": 3, "idle": 3, "total": 10}, **extra}


async def _proxy(start_proxy, fake: FakeOpenRouter, **extra: Any):
    cfg = make_config(providers={"or": _provider(fake, **extra)},
                      models=[{"name": "llama", "targets": [{"provider": "or", "model": LLAMA}]},
                              {"name": "mini", "targets": [{"provider": "or", "model": "openai/gpt-4o-mini"}]},
                              {"name": "claude", "targets": [{"provider": "or", "model": "anthropic/claude-x"}]}])
    server = await start_proxy(cfg)
    return server, openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)


async def test_plain_with_attribution_headers_and_usage(start_proxy, fake):
    _, client = await _proxy(start_proxy, fake)
    res = await client.chat.completions.create(model="mini", messages=MSG)
    assert res.choices[0].message.content == "Hello from OpenRouter"
    assert res.usage is not None and res.usage.prompt_tokens == 12
    assert res.usage.prompt_tokens_details is not None and res.usage.prompt_tokens_details.cached_tokens == 4
    sent = fake.headers[-1]
    assert sent["HTTP-Referer"] == "https://app.example"
    assert sent["X-Title"] == "Example App" and sent["X-OpenRouter-Title"] == "Example App"
    assert sent["Authorization"] == "Bearer sk-or-upstream"
    assert MASTER not in str(sent)
    assert fake.requests[-1]["model"] == "openai/gpt-4o-mini"
    assert fake.models_headers and fake.models_headers[0]["Authorization"] == "Bearer sk-or-upstream"


async def test_stream_relayed_with_processing_comments_and_usage(start_proxy, fake):
    server, client = await _proxy(start_proxy, fake)
    stream = await client.chat.completions.create(model="mini", messages=MSG, stream=True,
                                                  stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "Hello from OpenRouter"
    assert usage is not None and usage.total_tokens == 15
    async with aiohttp.ClientSession() as s, s.post(
            server.make_url("/v1/chat/completions"), headers={"Authorization": f"Bearer {MASTER}"},
            data=orjson.dumps({"model": "mini", "messages": MSG, "stream": True})) as r:
        raw = await r.read()
    assert raw.startswith(b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\n")   # bytes relayed as sent
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in raw           # the client did not ask for usage: the usage-only event is stripped


async def test_routing_fields_pass_through_untouched(start_proxy, fake):
    _, client = await _proxy(start_proxy, fake)
    routing = {"provider": {"order": ["together", "deepinfra"], "allow_fallbacks": False,
                            "require_parameters": True, "data_collection": "deny", "only": ["together"],
                            "ignore": ["azure"], "sort": "throughput", "quantizations": ["fp8"],
                            "max_price": {"prompt": 1}},
               "models": [LLAMA, "mistralai/mistral-7b-instruct"], "route": "fallback",
               "transforms": ["middle-out"], "plugins": [{"id": "context-compression"}],
               "usage": {"include": True}, "session_id": "s-1"}
    raw = await client.chat.completions.with_raw_response.create(model="llama", messages=MSG, extra_body=routing)
    assert raw.parse().choices[0].message.content == "Hello from OpenRouter"
    got = fake.requests[-1]
    for k, v in routing.items():
        assert got[k] == v, k
    assert "x-llm-dropped-params" not in raw.headers


async def test_unsupported_params_dropped_and_reported(start_proxy, fake):
    _, client = await _proxy(start_proxy, fake)
    raw = await client.chat.completions.with_raw_response.create(
        model="llama", messages=MSG, temperature=0.3, tools=TOOLS, tool_choice="auto", frequency_penalty=0.5,
        response_format={"type": "json_object"}, max_completion_tokens=20, extra_body={"top_k": 5})
    assert sorted(raw.headers["x-llm-dropped-params"].split(",")) == \
        ["frequency_penalty", "response_format", "tool_choice", "tools"]
    got = fake.requests[-1]
    for k in ("tools", "tool_choice", "frequency_penalty", "response_format"):
        assert k not in got, k
    assert got["temperature"] == 0.3 and got["top_k"] == 5
    assert got["max_completion_tokens"] == 20       # the model lists max_tokens: its equivalent is kept
    assert got["messages"] == MSG
    # a model that lists them gets them all
    raw = await client.chat.completions.with_raw_response.create(model="mini", messages=MSG, tools=TOOLS,
                                                                 tool_choice="auto", frequency_penalty=0.5)
    assert "x-llm-dropped-params" not in raw.headers
    assert fake.requests[-1]["tools"] == TOOLS
    # a model the list does not know: everything is sent
    raw = await client.chat.completions.with_raw_response.create(model="claude", messages=MSG, tools=TOOLS,
                                                                 extra_body={"top_a": 0.1})
    assert "x-llm-dropped-params" not in raw.headers
    assert fake.requests[-1]["tools"] == TOOLS and fake.requests[-1]["top_a"] == 0.1


async def test_unsupported_params_rejected_in_reject_mode(start_proxy, fake):
    _, client = await _proxy(start_proxy, fake, unsupported_params="reject")
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="llama", messages=MSG, temperature=0.2, tools=TOOLS)
    assert e.value.status_code == 400
    assert isinstance(e.value.body, dict) and e.value.body["param"] == "tools"
    assert "tools" in e.value.message
    assert fake.requests == []              # nothing reached the upstream
    res = await client.chat.completions.create(model="llama", messages=MSG, temperature=0.2)
    assert res.choices[0].message.content == "Hello from OpenRouter"


async def test_models_fetched_once_for_concurrent_requests_and_again_after_ttl(start_proxy, fake):
    fake.models_delay = 0.1                 # every request arrives while the first fetch is in flight
    _, client = await _proxy(start_proxy, fake, params_ttl=0.5, params_retry=0.5)

    async def one() -> str:
        raw = await client.chat.completions.with_raw_response.create(model="llama", messages=MSG, seed=1,
                                                                     presence_penalty=1.0)
        return raw.headers.get("x-llm-dropped-params", "")

    assert await asyncio.gather(*(one() for _ in range(20))) == ["presence_penalty"] * 20
    assert fake.models_fetches == 1
    assert await asyncio.gather(*(one() for _ in range(5))) == ["presence_penalty"] * 5
    assert fake.models_fetches == 1
    await asyncio.sleep(0.6)
    assert await asyncio.gather(*(one() for _ in range(10))) == ["presence_penalty"] * 10
    assert fake.models_fetches == 2


async def test_models_endpoint_down_still_serves_and_retries_later(start_proxy, fake):
    fake.models_mode = "down"
    _, client = await _proxy(start_proxy, fake, params_retry=0.3)
    raw = await client.chat.completions.with_raw_response.create(model="llama", messages=MSG, tools=TOOLS)
    assert raw.parse().choices[0].message.content == "Hello from OpenRouter"
    assert "x-llm-dropped-params" not in raw.headers
    assert fake.requests[-1]["tools"] == TOOLS          # nothing known: everything sent
    await client.chat.completions.create(model="llama", messages=MSG)
    assert fake.models_fetches == 1                     # the failure is remembered for params_retry seconds
    fake.models_mode = "ok"
    await asyncio.sleep(0.35)
    raw = await client.chat.completions.with_raw_response.create(model="llama", messages=MSG, tools=TOOLS)
    assert fake.models_fetches == 2
    assert raw.headers["x-llm-dropped-params"] == "tools"


async def test_models_endpoint_hanging_does_not_hold_requests(start_proxy, fake):
    fake.models_mode = "slow"
    _, client = await _proxy(start_proxy, fake, params_timeout=0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    res = await client.chat.completions.create(model="llama", messages=MSG, tools=TOOLS)
    assert res.choices[0].message.content == "Hello from OpenRouter"
    assert loop.time() - t0 < 2
    assert fake.requests[-1]["tools"] == TOOLS


async def test_midstream_error_event_reaches_the_sdk_as_an_exception(start_proxy, fake):
    server, client = await _proxy(start_proxy, fake)
    fake.mode = "midstream_error"
    stream = await client.chat.completions.create(model="mini", messages=MSG, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as e:
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == "Hello from"
    assert "Provider disconnected unexpectedly" in e.value.message
    async with aiohttp.ClientSession() as s, s.post(
            server.make_url("/v1/chat/completions"), headers={"Authorization": f"Bearer {MASTER}"},
            data=orjson.dumps({"model": "mini", "messages": MSG, "stream": True})) as r:
        raw = await r.read()
    events = [b for b in raw.split(b"\n\n") if b]
    assert b'"finish_reason":"error"' in events[-2]      # OpenRouter's own event, relayed untouched
    assert events[-1].startswith(b"event: error\ndata: ")  # then the stream is ended as failed
    assert orjson.loads(events[-1].split(b"data: ", 1)[1])["error"]["message"] == \
        "Provider disconnected unexpectedly"


async def test_credits_exhausted_is_insufficient_quota_without_sdk_retry(start_proxy, fake):
    server = (await _proxy(start_proxy, fake))[0]
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=2)
    fake.mode, fake.error_status = "error", 402
    fake.error_body = {"error": {"code": 402, "message": "Insufficient credits.",
                                 "metadata": {"error_type": "payment_required"}}}
    with pytest.raises(openai.RateLimitError) as e:
        await client.chat.completions.create(model="mini", messages=MSG)
    assert e.value.code == "insufficient_quota"
    assert e.value.response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == 1          # x-should-retry: false stops the SDK's own retries


async def test_moderation_and_rate_limit_errors(start_proxy, fake):
    _, client = await _proxy(start_proxy, fake)
    fake.mode, fake.error_status = "error", 403
    fake.error_body = {"error": {"code": 403, "message": "Input was flagged",
                                 "metadata": {"reasons": ["harassment"], "flagged_input": "...",
                                              "provider_name": "OpenAI", "model_slug": "openai/gpt-4o-mini"}}}
    with pytest.raises(openai.PermissionDeniedError) as e:
        await client.chat.completions.create(model="mini", messages=MSG)
    assert e.value.code == "content_filter" and "harassment" in e.value.message
    fake.error_status = 429
    fake.error_body = {"error": {"code": 429, "message": "Rate limit exceeded",
                                 "metadata": {"error_type": "rate_limit_exceeded"}}}
    with pytest.raises(openai.RateLimitError) as e2:
        await client.chat.completions.create(model="mini", messages=MSG)
    assert isinstance(e2.value.body, dict) and e2.value.body["message"] == "Rate limit exceeded"
    assert e2.value.code == "rate_limit_exceeded"


def test_health_request_and_default_base_url(fake):
    cfg = make_config(providers={"or": {"type": "openrouter", "api_key": "k", "title": "T"}},
                      models=[{"name": "m", "targets": [{"provider": "or", "model": LLAMA}]}])
    p = OpenRouterProvider(cfg.providers["or"])
    wire = p.health_request()
    assert wire is not None and wire.method == "GET" and wire.url == "https://openrouter.ai/api/v1/models"
    assert "HTTP-Referer" not in wire.headers and wire.headers["X-Title"] == "T"
    assert p.to_wire(_call(), Target(provider="or", model=LLAMA)).url == \
        "https://openrouter.ai/api/v1/chat/completions"


def _call():
    from proxy.context import ChatCall
    return ChatCall(body={"model": "m", "messages": MSG}, model="m", stream=False)


def test_unsupported_equivalents_and_dependents():
    from proxy.providers.openrouter_params import unsupported
    sp = frozenset({"max_tokens", "reasoning", "temperature", "tools", "structured_outputs"})
    body = {"model": "m", "messages": MSG, "provider": {"only": ["x"]}, "models": ["a"], "stream": True,
            "max_completion_tokens": 5, "reasoning_effort": "low", "include_reasoning": True,
            "response_format": {"type": "json_schema"}, "logprobs": True, "top_logprobs": 3, "tool_choice": "auto",
            "temperature": 1}
    # equivalents kept (max_tokens, reasoning, structured_outputs); each unlisted field goes on its own
    assert unsupported(body, sp) == ["logprobs", "top_logprobs", "tool_choice"]
    assert unsupported({"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": True}, frozenset()) == \
        ["tools", "tool_choice", "parallel_tool_calls"]
    both = {"tools": TOOLS, "tool_choice": "auto"}
    assert unsupported(both, frozenset({"tools", "tool_choice"})) == []
    assert unsupported(both, frozenset({"tool_choice"})) == ["tools", "tool_choice"]    # listed, but needs tools


def test_model_list_parsing_and_variant_lookup():
    from proxy.providers.openrouter_params import ParamCache, parse_models
    body = orjson.dumps({"data": [{"id": LLAMA, "canonical_slug": LLAMA + "-20240723", "supported_parameters": ["seed"]},
                                  {"id": "x/no-params"}, "junk"]})
    models = parse_models(body)
    assert models[LLAMA] == frozenset({"seed"}) and models[LLAMA + "-20240723"] == frozenset({"seed"})
    assert "x/no-params" not in models
    cache = ParamCache(url="u", headers={}, ttl=1, retry=1, timeout=1, provider="or")
    cache.models = models
    assert cache.lookup(LLAMA + ":free") == frozenset({"seed"})
    assert cache.lookup("x/no-params") is None
    with pytest.raises(ValueError):
        parse_models(b'{"object": "list"}')


def test_failed_choice_in_a_200_answer_becomes_an_upstream_error():
    from proxy.errors import UpstreamError
    cfg = make_config(providers={"or": {"type": "openrouter", "api_key": "k"}},
                      models=[{"name": "m", "targets": [{"provider": "or", "model": LLAMA}]}])
    p = OpenRouterProvider(cfg.providers["or"])
    target = Target(provider="or", model=LLAMA)
    failed = {"id": "gen-1", "object": "chat.completion", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "error",
        "error": {"code": 502, "message": "This model is currently experiencing high demand.",
                  "metadata": {"error_type": "provider_unavailable"}}}]}
    with pytest.raises(UpstreamError) as e:
        p.from_wire(200, orjson.dumps(failed), _call(), target)
    assert e.value.status == 502 and e.value.retryable
    assert e.value.message == "This model is currently experiencing high demand."
    partial = orjson.loads(orjson.dumps(failed))
    partial["choices"][0]["message"]["content"] = "partial output..."
    body, _ = p.from_wire(200, orjson.dumps(partial), _call(), target)     # partial output: relayed as sent
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "partial output..."
