"""The Gemini adapter end to end (official openai SDK -> proxy -> fake Gemini REST), plus a check that every
recorded Gemini wire body in tests/fixtures/gemini/ is valid for the google-genai SDK's own types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from google.genai import types

from proxy.config import Target
from proxy.context import ChatCall
from proxy.errors import InvalidRequest
from proxy.providers.gemini import GeminiProvider
from proxy.streaming.sse import SSEDecoder
from tests.conftest import MASTER, make_config
from tests.fakes.gemini_upstream import MODEL, FakeGemini

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "gemini").glob("*.json"))
KEY = "gm-upstream-secret"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


# -- fixture wire bodies against google-genai's pydantic types (extra fields are forbidden there) ----------

REQUEST_FIELDS: dict[str, Any] = {"contents": list[types.Content], "systemInstruction": types.Content,
                  "generationConfig": types.GenerationConfig, "tools": list[types.Tool],
                  "toolConfig": types.ToolConfig, "safetySettings": list[types.SafetySetting]}


def _validate_request(body: dict[str, Any]) -> None:
    from pydantic import TypeAdapter
    assert set(body) <= set(REQUEST_FIELDS) | {"requests"}, set(body)
    if "requests" in body:                      # batchEmbedContents
        for r in body["requests"]:
            assert set(r) <= {"model", "content", "taskType", "title", "outputDimensionality"}, set(r)
            assert r["model"].startswith("models/")
            types.Content.model_validate(r["content"])
        return
    for name, typ in REQUEST_FIELDS.items():
        if name in body:
            TypeAdapter(typ).validate_python(body[name])


def _stream_events(raw: str) -> list[dict[str, Any]]:
    dec = SSEDecoder()
    return [json.loads(e.data) for e in dec.feed(raw.encode()) + dec.flush()]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_wire_bodies_match_google_genai_types(path: Path) -> None:
    case = json.loads(path.read_text())
    checked = 0
    if "body" in case.get("wire_request", {}):
        _validate_request(case["wire_request"]["body"])
        checked += 1
    if "wire_response" in case:
        if case.get("endpoint") == "embeddings":
            types.EmbedContentResponse.model_validate(case["wire_response"])
        else:
            types.GenerateContentResponse.model_validate(case["wire_response"])
        checked += 1
    for ev in _stream_events(case.get("stream", "")):
        if "error" not in ev:
            types.GenerateContentResponse.model_validate(ev)
            checked += 1
    if "error_body" in case:
        body = case["error_body"][0] if isinstance(case["error_body"], list) else case["error_body"]
        assert set(body["error"]) <= {"code", "message", "status", "details"}
        checked += 1
    assert checked, "a fixture must carry at least one wire body"


def test_the_validation_catches_a_wrong_field_name() -> None:
    with pytest.raises(Exception, match="extra"):
        _validate_request({"contents": [{"role": "user", "parts": [{"txt": "x"}]}]})
    with pytest.raises(Exception, match="extra"):
        _validate_request({"contents": [], "generationConfig": {"max_output_token": 3}})


# -- end to end through the proxy ------------------------------------------------------------------------

@pytest.fixture
async def fake_gemini(aiohttp_server) -> FakeGemini:
    fake = FakeGemini(KEY)
    fake.server = await aiohttp_server(fake.app)
    return fake


def _config(fake: FakeGemini, **extra: Any):
    return make_config(
        providers={"g": {"type": "gemini", "base_url": str(fake.server.make_url("")), "api_key": KEY,
                         "timeouts": {"first_byte": 2, "idle": 2, "total": 10}, **extra}},
        models=[{"name": "gemini", "targets": [{"provider": "g", "model": MODEL}]},
                {"name": "embed", "targets": [{"provider": "g", "model": "text-embedding-004"}]}])


@pytest.fixture
async def client(start_proxy, fake_gemini) -> openai.AsyncOpenAI:
    server = await start_proxy(_config(fake_gemini))
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)


async def test_plain_completion(client, fake_gemini) -> None:
    resp = await client.chat.completions.with_raw_response.create(
        model="gemini", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=20)
    r = resp.parse()
    assert r.choices[0].message.content == "Hello from fake Gemini"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == MODEL
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 7, 18)
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 4
    assert resp.headers["x-llm-provider"] == "g"
    sent = fake_gemini.requests[-1]
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["generationConfig"] == {"maxOutputTokens": 20}
    assert fake_gemini.paths[-1] == f"/v1beta/models/{MODEL}:generateContent"
    assert fake_gemini.headers[-1]["x-goog-api-key"] == KEY
    assert "authorization" not in {k.lower() for k in fake_gemini.headers[-1]}
    assert KEY not in fake_gemini.paths[-1]


async def test_stream_with_include_usage(client, fake_gemini) -> None:
    stream = await client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "Hello from fake Gemini"
    assert finish == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (11, 7)
    assert fake_gemini.paths[-1] == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"


async def test_stream_without_include_usage_has_no_usage_chunk(client, fake_gemini) -> None:
    stream = await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "Hi"}],
                                                  stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {"tz": {"type": "string"}}}}}]


async def test_parallel_tool_calls_and_round_trip(client, fake_gemini) -> None:
    fake_gemini.mode = "parallel_tools"
    msgs: list[Any] = [{"role": "user", "content": "Weather and time in Paris?"}]
    r = await client.chat.completions.create(model="gemini", messages=msgs, tools=TOOLS, tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"tz": "Europe/Paris"}]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    sent = fake_gemini.requests[-1]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert [d["name"] for d in sent["tools"][0]["functionDeclarations"]] == ["get_weather", "get_time"]
    # Second turn: the SDK echoes the assistant message (with extra_content) and the tool results back.
    fake_gemini.mode = "ok"
    msgs.append(choice.message.model_dump(exclude_none=True))
    msgs += [{"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": 20}'},
             {"role": "tool", "tool_call_id": calls[1].id, "content": "09:00"}]
    r2 = await client.chat.completions.create(model="gemini", messages=msgs, tools=TOOLS)
    assert r2.choices[0].message.content == "Hello from fake Gemini"
    contents = fake_gemini.requests[-1]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[1]["parts"][0] == {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                       "thoughtSignature": "c2ln"}
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 20}}},
        {"functionResponse": {"name": "get_time", "response": {"result": "09:00"}}}]


async def test_parallel_tool_calls_streamed(client, fake_gemini) -> None:
    fake_gemini.mode = "parallel_tools"
    stream = await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "x"}],
                                                  tools=TOOLS, stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                slot["id"] += tc.id or ""
                slot["name"] += (tc.function.name or "") if tc.function else ""
                slot["args"] += (tc.function.arguments or "") if tc.function else ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_time"]
    assert json.loads(calls[1]["args"]) == {"tz": "Europe/Paris"}
    assert calls[0]["id"].startswith("call_")


async def test_image_input(client, fake_gemini) -> None:
    await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
    parts = fake_gemini.requests[-1]["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert parts[2] == {"fileData": {"fileUri": "https://example.com/a.png", "mimeType": "image/png"}}


async def test_prompt_blocked_is_content_filter(client, fake_gemini) -> None:
    fake_gemini.mode = "blocked"
    r = await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content == ""


async def test_embeddings_default_base64_and_float(client, fake_gemini) -> None:
    r = await client.embeddings.create(model="embed", input=["a b c d", "e"])   # the SDK asks for base64
    assert [d.index for d in r.data] == [0, 1]
    assert r.data[0].embedding == [0.25, -0.5, 1.0]
    assert r.data[1].embedding == [0.5, -0.5, 1.0]
    assert r.usage.prompt_tokens > 0
    assert fake_gemini.paths[-1] == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert fake_gemini.requests[-1]["requests"][1] == {"model": "models/text-embedding-004",
                                                       "content": {"parts": [{"text": "e"}]}}
    r = await client.embeddings.create(model="embed", input="one", encoding_format="float", dimensions=3)
    assert r.data[0].embedding == [0.25, -0.5, 1.0]
    assert fake_gemini.requests[-1]["requests"][0]["outputDimensionality"] == 3


async def test_rate_limit_is_rate_limit_error_with_retry_after(client, fake_gemini) -> None:
    fake_gemini.mode = "error429"
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "rate_limit_exceeded"
    assert "exceeded your current quota" in info.value.message
    err = GeminiProvider(_config(fake_gemini).providers["g"]).error_from_wire(
        429, orjson.dumps({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "m", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7.5s"}]}}), {"retry-after": "99"})
    assert err.retry_after == 7.5


async def test_context_too_long_is_bad_request(client, fake_gemini) -> None:
    fake_gemini.mode = "error400_context"
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "context_length_exceeded"


async def test_overloaded_is_503(client, fake_gemini) -> None:
    fake_gemini.mode = "error503"
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503


async def test_refused_key_is_502_and_never_echoed(client, fake_gemini) -> None:
    fake_gemini.mode = "bad_key"
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    assert info.value.code == "provider_auth_failed" and "provider 'g'" in info.value.message
    assert KEY not in str(info.value.body)


async def test_error_inside_stream_ends_stream_with_error(client, fake_gemini) -> None:
    fake_gemini.mode = "midstream_error"
    stream = await client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    got = ""
    with pytest.raises(openai.APIError, match="internal error"):
        async for chunk in stream:
            got += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert got == "Hello"


async def test_unsupported_params_dropped_or_rejected(start_proxy, fake_gemini) -> None:
    server = await start_proxy(_config(fake_gemini))
    c = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    resp = await c.chat.completions.with_raw_response.create(
        model="gemini", messages=[{"role": "user", "content": "x"}], logit_bias={"1": 2})
    assert resp.headers["x-llm-dropped-params"] == "logit_bias"
    assert "logit_bias" not in json.dumps(fake_gemini.requests[-1])
    server = await start_proxy(_config(fake_gemini, unsupported_params="reject"))
    c = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    n = len(fake_gemini.requests)
    with pytest.raises(openai.BadRequestError) as info:
        await c.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "x"}],
                                        logit_bias={"1": 2})
    assert info.value.param == "logit_bias"
    assert len(fake_gemini.requests) == n


async def test_health_request_lists_one_model(fake_gemini) -> None:
    provider = GeminiProvider(_config(fake_gemini).providers["g"])
    wire = provider.health_request()
    assert wire is not None and wire.method == "GET"
    assert wire.url.endswith("/v1beta/models?pageSize=1")
    async with aiohttp.ClientSession() as s, s.get(wire.url, headers=wire.headers) as r:
        assert r.status == 200
        assert (await r.json())["models"][0]["name"] == f"models/{MODEL}"
    assert fake_gemini.paths[-1] == "/v1beta/models?pageSize=1"


def test_default_base_url_and_bad_tool_reference() -> None:
    cfg = make_config(providers={"g": {"type": "gemini", "api_key": "k"}},
                      models=[{"name": "m", "targets": [{"provider": "g", "model": "gemini-2.5-flash"}]}])
    p = GeminiProvider(cfg.providers["g"])
    call = ChatCall(body={"model": "m", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "1"}]},
                    model="m", stream=False)
    health = p.health_request()
    assert health is not None and health.url == "https://generativelanguage.googleapis.com/v1beta/models?pageSize=1"
    with pytest.raises(InvalidRequest) as info:
        p.to_wire(call, Target(provider="g", model="gemini-2.5-flash"))
    assert info.value.param == "messages[0].tool_call_id"


def test_bad_signature_regex_is_a_config_error() -> None:
    from proxy.config import ConfigError
    cfg = make_config(providers={"g": {"type": "gemini", "thought_signature_fallback": "(["}},
                      models=[{"name": "m", "targets": [{"provider": "g", "model": "x"}]}])
    with pytest.raises(ConfigError, match="thought_signature_fallback"):
        GeminiProvider(cfg.providers["g"])


def test_two_candidates_become_two_choices() -> None:
    cfg = make_config(providers={"g": {"type": "gemini", "api_key": "k"}},
                      models=[{"name": "m", "targets": [{"provider": "g", "model": "gemini-2.5-flash"}]}])
    p = GeminiProvider(cfg.providers["g"])
    target = Target(provider="g", model="gemini-2.5-flash")
    call = ChatCall(body={"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}, model="m",
                    stream=False)
    assert orjson.loads(p.to_wire(call, target).body or b"")["generationConfig"] == {"candidateCount": 2}
    wire = {"candidates": [
        {"content": {"role": "model", "parts": [{"text": "B"}]}, "finishReason": "MAX_TOKENS", "index": 1},
        {"content": {"role": "model", "parts": [{"text": "A"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2, "totalTokenCount": 3}}
    body, usage = p.from_wire(200, orjson.dumps(wire), call, target)
    choices = orjson.loads(body)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "A", "stop"), (1, "B", "length")]
    assert usage.completion_tokens == 2
    stream = p.new_stream(call, target)
    out = stream.feed(b"data: " + orjson.dumps(wire) + b"\n\n") + stream.finish()
    events = [orjson.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    got = [(e["choices"][0]["index"], e["choices"][0]["delta"].get("content"), e["choices"][0]["finish_reason"])
           for e in events]
    assert got == [(1, "", None), (1, "B", None), (1, None, "length"), (0, "", None), (0, "A", None),
                   (0, None, "stop")]
    assert out.endswith(b"data: [DONE]\n\n")
