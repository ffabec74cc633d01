"""The Anthropic adapter: wire bodies checked against the official anthropic SDK's types, and end to end
through the proxy with the official openai SDK against a fake Anthropic upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_type_hints

import aiohttp
import anthropic.types as at
import openai
import pydantic
import pytest
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from anthropic.types.shared.error_response import ErrorResponse

from proxy.config import Target
from proxy.context import ChatCall
from proxy.errors import InvalidRequest
from proxy.providers.registry import provider_class
from tests.conftest import MASTER, make_config
from tests.fakes.anthropic_upstream import FakeAnthropic

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
CASES = sorted(FIXTURES.glob("*.json"))
MSG = [{"role": "user", "content": "Say hello"}]
WEATHER: list[dict[str, Any]] = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SAMPLING = {"temperature", "top_p", "top_k"}


def _load(p: Path) -> dict[str, Any]:
    return json.loads(p.read_text())


def _drain(v: Any) -> Any:
    """pydantic validates Iterable[...] lazily: consume every iterator so nested errors surface."""
    if isinstance(v, dict):
        return {k: _drain(x) for k, x in v.items()}
    if isinstance(v, str | bytes | int | float | bool) or v is None:
        return v
    return [_drain(x) for x in v]      # list, or pydantic's lazy ValidatorIterator


# -- wire formats against the SDK's own types --------------------------------------------------------------

@pytest.mark.parametrize("path", [p for p in CASES if "wire_request" in _load(p)], ids=lambda p: p.stem)
def test_wire_body_matches_sdk_request_types(path: Path) -> None:
    case = _load(path)
    body = case["wire_request"]["body"]
    version = case["provider"].get("anthropic_version", "2026-10-21")
    params = MessageCreateParamsStreaming if body.get("stream") else MessageCreateParamsNonStreaming
    known = set(get_type_hints(params))
    extra = set(body) - known
    # The installed SDK speaks 2026-10-21, which has no sampling params; 2023-06-01 still takes them.
    assert extra <= (SAMPLING if version < "2026-10-21" else set()), extra
    typed = {k: v for k, v in body.items() if k in known}
    adapter = pydantic.TypeAdapter(params)     # must outlive the lazy iterators it hands out
    validated = _drain(adapter.validate_python(typed))
    assert validated == typed          # nothing was an unknown (silently ignored) key


@pytest.mark.parametrize("path", [p for p in CASES if "wire_response" in _load(p)], ids=lambda p: p.stem)
def test_fixture_responses_are_sdk_messages(path: Path) -> None:
    at.Message.model_validate(_load(path)["wire_response"])


@pytest.mark.parametrize("path", [p for p in CASES if "stream" in _load(p)], ids=lambda p: p.stem)
def test_fixture_stream_events_are_sdk_events(path: Path) -> None:
    adapter = pydantic.TypeAdapter(at.RawMessageStreamEvent)
    for block in _load(path)["stream"].split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        obj = json.loads(data.removeprefix("data: "))
        assert name == "event: " + obj["type"]
        if obj["type"] == "error":
            ErrorResponse.model_validate(obj)
        elif obj["type"] != "ping":
            adapter.validate_python(obj)


@pytest.mark.parametrize("path", [p for p in CASES if "error_body" in _load(p)], ids=lambda p: p.stem)
def test_fixture_errors_are_sdk_error_responses(path: Path) -> None:
    ErrorResponse.model_validate(_load(path)["error_body"])


def _provider(**extra: Any):
    cfg = make_config(providers={"a": {"type": "anthropic", "api_key": "k", **extra}},
                      models=[{"name": "claude", "targets": [{"provider": "a", "model": "claude-haiku-4-5"}]}])
    pc = cfg.providers["a"]
    return provider_class(pc.type)(pc)


def test_embeddings_and_unsupported_parts_are_invalid_requests() -> None:
    p = _provider()
    target = Target(provider="a", model="claude-haiku-4-5")
    with pytest.raises(InvalidRequest, match="embeddings"):
        p.to_wire(ChatCall(body={"model": "claude", "input": "x"}, model="claude", stream=False,
                           endpoint="embeddings"), target)
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]
    with pytest.raises(InvalidRequest) as e:
        p.to_wire(ChatCall(body={"model": "claude", "messages": audio}, model="claude", stream=False), target)
    assert e.value.param == "messages[0].content[0]"


def test_health_request_lists_models_with_auth() -> None:
    wire = _provider(base_url="http://up.test/", anthropic_version="2023-06-01").health_request()
    assert wire is not None and wire.method == "GET" and wire.url == "http://up.test/v1/models"
    assert wire.headers["x-api-key"] == "k" and wire.headers["anthropic-version"] == "2023-06-01"


# -- end to end: openai SDK -> proxy -> fake Anthropic ---------------------------------------------------

@pytest.fixture
async def fake(aiohttp_server) -> FakeAnthropic:
    f = FakeAnthropic()
    f.server = await aiohttp_server(f.app)        # type: ignore[attr-defined]
    return f


@pytest.fixture
async def proxy(start_proxy, fake):
    """Starts a proxy whose model `claude` goes to the fake; returns an AsyncOpenAI client for it."""
    clients: list[openai.AsyncOpenAI] = []

    async def go(**extra: Any) -> openai.AsyncOpenAI:
        up = {"type": "anthropic", "base_url": str(fake.server.make_url("")).rstrip("/"), "api_key": fake.api_key,
              "timeouts": {"first_byte": 2, "idle": 2, "total": 10}, **extra}
        cfg = make_config(providers={"claude_up": up}, models=[
            {"name": "claude", "targets": [{"provider": "claude_up", "model": "claude-haiku-4-5"}]}])
        server = await start_proxy(cfg)
        clients.append(openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0))
        return clients[-1]

    yield go
    for c in clients:
        await c.close()


async def test_plain_and_streamed_text(proxy, fake) -> None:
    client = await proxy()
    res = await client.chat.completions.create(model="claude", messages=MSG)
    assert res.choices[0].message.content == fake.reply
    assert res.choices[0].finish_reason == "stop"
    assert res.usage is not None and (res.usage.prompt_tokens, res.usage.completion_tokens) == (21, 6)
    sent, headers = fake.requests[-1], fake.headers[-1]
    assert sent == {"model": "claude-haiku-4-5", "max_tokens": 4096, "messages": MSG}
    assert headers["x-api-key"] == fake.api_key and headers["anthropic-version"] == "2026-10-21"
    assert MASTER not in str(headers)

    stream = await client.chat.completions.create(model="claude", messages=MSG, stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake.reply
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)                 # the client did not ask for usage


async def test_include_usage_gives_a_usage_chunk_with_cache_tokens(proxy, fake) -> None:
    fake.usage = {"input_tokens": 5, "output_tokens": 6, "cache_read_input_tokens": 40,
                  "cache_creation_input_tokens": 10}
    client = await proxy()
    stream = await client.chat.completions.create(model="claude", messages=MSG, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (55, 6, 61)
    assert last.usage.prompt_tokens_details is not None and last.usage.prompt_tokens_details.cached_tokens == 40
    # cache_creation_input_tokens: next to cached_tokens (OpenRouter's place), in streams and in JSON
    assert last.usage.prompt_tokens_details.model_dump()["cache_write_tokens"] == 10
    res = await client.chat.completions.create(model="claude", messages=MSG)
    assert res.usage is not None and res.usage.prompt_tokens_details is not None
    details = res.usage.prompt_tokens_details.model_dump(exclude_none=True)
    assert details == {"cached_tokens": 40, "cache_write_tokens": 10}
    assert "cache_write_tokens" not in res.usage.model_dump()


async def test_parallel_tool_calls_plain_and_streamed(proxy, fake) -> None:
    fake.mode = "parallel_tools"
    client = await proxy()
    res = await client.chat.completions.create(model="claude", messages=MSG, tools=WEATHER)
    calls = res.choices[0].message.tool_calls or []
    assert res.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_fake_1", "get_weather", {"city": "Paris"}), ("toolu_fake_2", "get_weather", {"city": "Tokyo"})]
    assert fake.requests[-1]["tools"][0]["input_schema"] == WEATHER[0]["function"]["parameters"]

    stream = await client.chat.completions.create(model="claude", messages=MSG, tools=WEATHER, stream=True)
    acc: dict[int, dict[str, str]] = {}
    finish = None
    async for c in stream:
        if not c.choices:
            continue
        finish = c.choices[0].finish_reason or finish
        for tc in c.choices[0].delta.tool_calls or []:
            slot = acc.setdefault(tc.index, {"id": "", "name": "", "args": ""})
            if tc.id:
                slot["id"], slot["name"] = tc.id, tc.function.name if tc.function and tc.function.name else ""
            slot["args"] += (tc.function.arguments or "") if tc.function else ""
    assert finish == "tool_calls"
    assert sorted(acc) == [0, 1]
    assert [(acc[i]["id"], acc[i]["name"], json.loads(acc[i]["args"])) for i in (0, 1)] == [
        ("toolu_fake_1", "get_weather", {"city": "Paris"}), ("toolu_fake_2", "get_weather", {"city": "Tokyo"})]


async def test_tool_results_round_trip_and_image_input(proxy, fake) -> None:
    client = await proxy()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this and the weather?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "snow"},
    ]
    res = await client.chat.completions.create(model="claude", messages=messages, tools=WEATHER)
    assert res.choices[0].message.content == fake.reply
    sent = fake.requests[-1]
    assert sent["system"] == "Be brief."
    user, assistant, results = sent["messages"]
    assert user["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                                               "data": "/9j/4AAQ"}}
    assert user["content"][2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    assert [b["input"] for b in assistant["content"]] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "snow"}]}


async def test_json_schema_response_format(proxy, fake) -> None:
    client = await proxy()
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
        "type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}}}
    res = await client.chat.completions.create(model="claude", messages=MSG, response_format=rf)
    assert json.loads(res.choices[0].message.content or "") == {"answer": 42}
    assert res.choices[0].finish_reason == "stop" and not res.choices[0].message.tool_calls
    assert fake.requests[-1]["tool_choice"] == {"type": "tool", "name": "answer"}


async def test_sampling_params_dropped_for_2026_and_reported(proxy, fake) -> None:
    client = await proxy()
    raw = await client.chat.completions.with_raw_response.create(
        model="claude", messages=MSG, temperature=0, top_p=1, seed=3, n=1)
    assert sorted(raw.headers["x-llm-dropped-params"].split(",")) == ["seed", "temperature", "top_p"]
    assert raw.parse().choices[0].message.content == fake.reply
    assert not SAMPLING & set(fake.requests[-1])


async def test_version_2023_sends_sampling_params(proxy, fake) -> None:
    client = await proxy(anthropic_version="2023-06-01")
    raw = await client.chat.completions.with_raw_response.create(model="claude", messages=MSG, temperature=0.3)
    assert "x-llm-dropped-params" not in raw.headers
    assert fake.requests[-1]["temperature"] == 0.3
    assert fake.headers[-1]["anthropic-version"] == "2023-06-01"


async def test_fake_rejects_sampling_on_2026_like_the_real_api(fake) -> None:
    """Guards the fake itself: without the adapter's dropping, 2026-10-21 would answer 400."""
    async with aiohttp.ClientSession() as s:
        async with s.post(fake.server.make_url("/v1/messages"), json={
                "model": "m", "max_tokens": 5, "messages": MSG, "temperature": 1},
                headers={"x-api-key": fake.api_key, "anthropic-version": "2026-10-21"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["message"] == "temperature: Extra inputs are not permitted"


async def test_reject_mode_gives_400_with_param(proxy, fake) -> None:
    client = await proxy(unsupported_params="reject")
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="claude", messages=MSG, temperature=0.5)
    assert e.value.status_code == 400
    assert isinstance(e.value.body, dict) and e.value.body["param"] == "temperature"
    assert e.value.body["code"] == "unsupported_parameter"
    assert fake.requests == []                                  # nothing reached the upstream


@pytest.mark.parametrize(("mode", "exc", "status"), [
    ("error429", openai.RateLimitError, 429),
    ("error529", openai.InternalServerError, 503),
    ("prompt_too_long", openai.BadRequestError, 400),
    ("error401", openai.InternalServerError, 502),
])
async def test_upstream_errors_arrive_as_sdk_exceptions(proxy, fake, mode, exc, status) -> None:
    fake.mode = mode
    client = await proxy()
    with pytest.raises(exc) as e:
        await client.chat.completions.create(model="claude", messages=MSG)
    assert e.value.status_code == status
    if mode == "prompt_too_long":
        assert e.value.code == "context_length_exceeded"
        assert isinstance(e.value.body, dict) and e.value.body["message"].startswith("prompt is too long")
    if mode == "error401":
        assert fake.api_key not in str(e.value.body)


@pytest.mark.parametrize("mode", ["stream_error", "no_stop"])
async def test_stream_failures_end_with_an_error_event(proxy, fake, mode) -> None:
    fake.mode = mode
    client = await proxy()
    stream = await client.chat.completions.create(model="claude", messages=MSG, stream=True)
    got = ""
    with pytest.raises(openai.APIError):
        async for c in stream:
            got += c.choices[0].delta.content or "" if c.choices else ""
    assert got.startswith("Hello")


async def test_embeddings_are_refused(proxy, fake) -> None:
    client = await proxy()
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        await client.embeddings.create(model="claude", input="hi")
