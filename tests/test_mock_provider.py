"""The mock as a complete offline provider, through the official openai SDK: tool calls that validate
against the tool's schema (forced, `auto` when the user names a tool, streamed by index), `n` choices,
structured output, base64 embeddings with `dimensions`, `stream_options.include_usage`; all deterministic."""

from __future__ import annotations

import base64
import struct

import aiohttp
import jsonschema
import openai
import orjson
import pydantic
import pytest

from tests.conftest import MASTER, make_config

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit", "days", "when"],
           "properties": {"city": {"type": "string", "minLength": 3},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7},
                          "when": {"type": "string", "format": "date"},
                          "where": {"$ref": "#/$defs/point"},
                          "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}},
           "$defs": {"point": {"type": "object", "required": ["lat", "lon"],
                               "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                              "lon": {"type": "number", "minimum": -180, "maximum": 180}}}}}
CLOCK = {"type": "object", "properties": {"tz": {"type": ["string", "null"]}}, "required": ["tz"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": CLOCK}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}


@pytest.fixture
async def client(start_proxy):
    server = await start_proxy(make_config())
    c = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    c._test_url = str(server.make_url("/v1"))      # type: ignore[attr-defined]
    return c


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def _streamed(stream) -> tuple[dict[int, dict], list[str], object]:
    """Reassemble tool calls by index as OpenAI clients do; also the finish reasons and the usage chunk."""
    calls: dict[int, dict] = {}
    finishes, usage = [], None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = tc.id or slot["id"]
                slot["name"] += (tc.function.name or "") if tc.function else ""
                slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return calls, finishes, usage


async def test_forced_tool_call_validates_against_the_schema_json_and_stream(client):
    forced = {"type": "function", "function": {"name": "get_weather"}}
    r = await client.chat.completions.create(model="mock", messages=_user("Weather in Paris?"), tools=TOOLS,
                                             tool_choice=forced)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = orjson.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER)
    assert r.usage.completion_tokens > 0
    again = await client.chat.completions.create(model="mock", messages=_user("Weather in Paris?"), tools=TOOLS,
                                                 tool_choice=forced)
    assert again.choices[0].message.tool_calls[0].function.arguments == call.function.arguments   # deterministic
    stream = await client.chat.completions.create(model="mock", messages=_user("Weather in Paris?"), tools=TOOLS,
                                                  tool_choice=forced, stream=True)
    calls, finishes, usage = await _streamed(stream)
    assert finishes == ["tool_calls"] and usage is None          # no include_usage asked: no usage chunk
    assert calls == {0: {"id": call.id, "name": "get_weather", "arguments": call.function.arguments}}


async def test_auto_calls_the_tools_the_user_names_in_parallel_and_answers_tool_results(client):
    msgs = _user("Please use get_time and get_weather for Oslo")
    stream = await client.chat.completions.create(model="mock", messages=msgs, tools=TOOLS, stream=True,
                                                  stream_options={"include_usage": True})
    calls, finishes, usage = await _streamed(stream)
    assert [c["name"] for _, c in sorted(calls.items())] == ["get_weather", "get_time"]
    for c in calls.values():
        jsonschema.validate(orjson.loads(c["arguments"]), SCHEMAS[c["name"]])
    assert finishes == ["tool_calls"] and usage.completion_tokens > 0 and usage.total_tokens > usage.prompt_tokens
    one = await client.chat.completions.create(model="mock", messages=msgs, tools=TOOLS, parallel_tool_calls=False)
    assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_weather"]
    plain = await client.chat.completions.create(model="mock", messages=_user("Hello there"), tools=TOOLS)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].message.content
    # after the tool's result the model answers in words instead of calling again
    history = [*msgs, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": null}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    done = await client.chat.completions.create(model="mock", messages=history, tools=TOOLS)
    assert done.choices[0].finish_reason == "stop" and done.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="mock", messages=msgs, tools=TOOLS,
                                             tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.body["param"] == "tool_choice"


async def test_n_choices_json_and_stream(client):
    r = await client.chat.completions.create(model="mock", messages=_user("Hi"), n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) == 3 and r.usage.completion_tokens == sum(len(t.split()) for t in texts)
    stream = await client.chat.completions.create(model="mock", messages=_user("Hi"), n=3, stream=True)
    got: dict[int, str] = {}
    async for chunk in stream:
        for c in chunk.choices:
            got[c.index] = got.get(c.index, "") + (c.delta.content or "")
    assert [got[i] for i in range(3)] == texts


class Forecast(pydantic.BaseModel):
    city: str
    days: int
    rain: bool
    hours: list[float]


async def test_response_format_json_schema_and_json_object(client):
    parsed = await client.chat.completions.parse(model="mock", messages=_user("Forecast?"), response_format=Forecast)
    assert isinstance(parsed.choices[0].message.parsed, Forecast)     # the SDK validated it (strict schema)
    r = await client.chat.completions.create(model="mock", messages=_user("Reply in JSON"),
                                             response_format={"type": "json_object"})
    assert isinstance(orjson.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "required": ["items"], "properties": {"items": {
        "type": "array", "minItems": 2, "items": {"type": "integer", "multipleOf": 5, "minimum": 10}}}}
    stream = await client.chat.completions.create(
        model="mock", messages=_user("List"), stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "l", "schema": schema}})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    jsonschema.validate(orjson.loads(text), schema)


async def test_embeddings_base64_as_the_node_sdk_asks_and_dimensions(client):
    # The Node SDK sends encoding_format: "base64" by default and decodes little-endian float32 itself.
    async with aiohttp.ClientSession() as s:
        async with s.post(client._test_url + "/embeddings", headers={"Authorization": f"Bearer {MASTER}"},
                          json={"model": "mock", "input": ["a", "b"], "encoding_format": "base64",
                                "dimensions": 64}) as r:
            assert r.status == 200
            body = await r.json()
    vectors = [struct.unpack("<64f", base64.b64decode(d["embedding"])) for d in body["data"]]
    assert all(abs(sum(v * v for v in vec) - 1) < 1e-4 for vec in vectors) and vectors[0] != vectors[1]
    # The Python SDK asks for base64 too and decodes it: the same vector as asking for floats
    sdk = await client.embeddings.create(model="mock", input="a", dimensions=64)
    floats = await client.embeddings.create(model="mock", input="a", dimensions=64, encoding_format="float")
    assert len(sdk.data[0].embedding) == 64
    assert sdk.data[0].embedding == pytest.approx(list(vectors[0]), abs=1e-6)
    assert floats.data[0].embedding == pytest.approx(list(vectors[0]), abs=1e-6)
    default = await client.embeddings.create(model="mock", input="a", encoding_format="float")
    assert len(default.data[0].embedding) == 8
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="mock", input="a", dimensions=0)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 3}]}},
     "required": ["v"]},
    {"allOf": [{"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]},
               {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
    {"type": "object", "properties": {"t": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}],
                                            "minItems": 2}}, "required": ["t"]},
    {"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                                      "k": {"type": "integer", "multipleOf": 7, "minimum": 1, "maximum": 20},
                                      "s": {"type": "string", "maxLength": 2, "minLength": 1},
                                      "e": {"type": "string", "format": "email"}}, "required": ["x", "k", "s", "e"]},
    {"type": "object", "properties": {"node": {"$ref": "#"}}},          # recursive: bounded depth
])
async def test_tool_arguments_validate_for_each_schema_shape(client, schema):
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    r = await client.chat.completions.create(model="mock", messages=_user("go"), tools=[tool], tool_choice="required")
    jsonschema.validate(orjson.loads(r.choices[0].message.tool_calls[0].function.arguments), schema,
                        format_checker=jsonschema.FormatChecker())
