"""POST /v1/responses with the official openai SDK: converted to chat completions (fake chat-only upstream,
the mock, Anthropic), passed through to an upstream that serves /v1/responses; previous_response_id;
GET/DELETE; one usage event per call however it ends."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import MASTER
from tests.ingress_helpers import ADMIN, hang_up_after, ingress_config, usage_events
from tests.keys_helpers import create_key, ledger_url  # noqa: F401 - a fixture

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


def _client(server, key: str = MASTER) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0)


@pytest.fixture
async def proxy(start_proxy, fake_openai, fake_anthropic, tmp_path):
    return await start_proxy(ingress_config(fake_openai, fake_anthropic, tmp_path))


async def test_create_json_and_stream_converted(proxy, fake_openai):
    client = _client(proxy)
    res = await client.responses.create(model="gpt", input="Say hello", instructions="Be brief.",
                                        max_output_tokens=50)
    assert res.object == "response" and res.status == "completed" and res.output_text == fake_openai.reply
    assert res.usage.input_tokens == 11 and res.usage.output_tokens == len(fake_openai.reply.split())
    sent = fake_openai.requests[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert sent["max_completion_tokens"] == 50
    stream = await client.responses.create(model="gpt", input="Say hello", stream=True)
    kinds, text, seqs, final = [], "", [], None
    async for ev in stream:
        kinds.append(ev.type)
        seqs.append(ev.sequence_number)
        if ev.type == "response.output_text.delta":
            text += ev.delta
        if ev.type == "response.completed":
            final = ev.response
    assert text == fake_openai.reply and final is not None and final.output_text == fake_openai.reply
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert seqs == list(range(len(seqs)))
    assert final.usage.input_tokens == 11
    evs = await usage_events(proxy, 2)
    assert [e["request_type"] for e in evs] == ["responses", "responses"]
    assert all(e["tokens"]["prompt"] == 11 and not e["estimated"] for e in evs)


async def test_function_tool_round_trip(proxy, fake_openai):
    fake_openai.mode = "tools"
    client = _client(proxy)
    res = await client.responses.create(model="gpt", input="Weather in Paris?", tools=[WEATHER])
    [call] = [o for o in res.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    async with client.responses.stream(model="gpt", input="Weather in Paris?", tools=[WEATHER]) as stream:
        kinds = [ev.type async for ev in stream]
        streamed = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    [call2] = [o for o in streamed.output if o.type == "function_call"]
    assert json.loads(call2.arguments) == {"city": "Paris"}
    fake_openai.mode = "ok"
    res = await client.responses.create(model="gpt", tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert res.output_text == fake_openai.reply
    chat = fake_openai.requests[-1]["messages"]
    assert chat[1]["tool_calls"][0]["id"] == call.call_id and chat[2] == {
        "role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


class Answer(BaseModel):
    answer: int


async def test_structured_output_through_text_format(proxy, fake_openai):
    fake_openai.reply = '{"answer": 42}'
    res = await _client(proxy).responses.parse(model="gpt", input="6 x 7?", text_format=Answer)
    assert res.output_parsed == Answer(answer=42)
    rf = fake_openai.requests[-1]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "Answer"
    assert rf["json_schema"]["schema"]["properties"]["answer"]["type"] == "integer"


async def test_previous_response_id_over_two_turns_and_get_delete(proxy, fake_openai):
    client = _client(proxy)
    first = await client.responses.create(model="gpt", input="My name is Ada.", instructions="Be brief.")
    second = await client.responses.create(model="mock", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text
    third = await client.responses.create(model="gpt", input="And again?", previous_response_id=second.id,
                                          stream=False)
    chat = fake_openai.requests[-1]["messages"]
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]   # no instructions
    assert chat[0]["content"] == "My name is Ada." and chat[1]["content"] == fake_openai.reply
    assert chat[3]["content"] == second.output_text
    got = await client.responses.retrieve(third.id)
    assert got.id == third.id and got.output_text == fake_openai.reply
    other = (await create_key(proxy))["key"]                   # another tenant sees nothing of it
    with pytest.raises(openai.NotFoundError):
        await _client(proxy, other).responses.retrieve(third.id)
    with pytest.raises(openai.BadRequestError) as e:
        await _client(proxy, other).responses.create(model="gpt", input="x", previous_response_id=third.id)
    assert e.value.code == "previous_response_not_found" and e.value.param == "previous_response_id"
    await client.responses.delete(third.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(third.id)
    with pytest.raises(openai.BadRequestError) as e:
        await client.responses.create(model="gpt", input="x", previous_response_id="resp_nope")
    assert e.value.code == "previous_response_not_found"
    nostore = await client.responses.create(model="gpt", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(nostore.id)


async def test_converted_for_an_anthropic_target(proxy, fake_anthropic):
    res = await _client(proxy).responses.create(model="claude", input="Say hello", max_output_tokens=40)
    assert res.output_text == fake_anthropic.reply and res.usage.input_tokens == 21
    assert fake_anthropic.requests[-1]["max_tokens"] == 40


async def test_passthrough_to_an_upstream_that_serves_responses(proxy, fake_openai):
    raw = b'{"input":  "Say hello", "model":"gpt-r","metadata":{"model":"keep me"}, "store": true}'
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.make_url("/v1/responses"), data=raw, headers=ADMIN) as r:
            assert r.status == 200
            body = await r.json()
        assert fake_openai.raw[-1] == raw.replace(b'"model":"gpt-r"', b'"model":"gpt-4o-mini"')
        assert body["id"] == "resp_upstream1" and body["output"][0]["content"][0]["text"] == fake_openai.reply
        streamed = raw.replace(b'"store": true', b'"store": true, "stream": true')
        async with s.post(proxy.make_url("/v1/responses"), data=streamed, headers=ADMIN) as r:
            got = await r.read()
    assert got == fake_openai.streamed
    client = _client(proxy)
    # a continuation is pinned to the provider holding the response, even where another target comes first
    res = await client.responses.create(model="mixed", input="again", previous_response_id="resp_upstream1")
    assert fake_openai.requests[-1]["previous_response_id"] == "resp_upstream1" and res.output_text
    assert "messages" not in fake_openai.requests[-1]
    with pytest.raises(openai.BadRequestError) as e:          # no target of `gpt` holds it
        await client.responses.create(model="gpt", input="again", previous_response_id="resp_upstream1")
    assert e.value.code == "previous_response_not_found"
    evs = await usage_events(proxy, 3)
    assert {e["request_type"] for e in evs} == {"responses"}
    assert all(e["tokens"]["prompt"] == 13 and e["tokens"]["completion"] == 5 and e["tokens"]["cached"] == 2
               for e in evs)


async def test_errors_and_a_key_refused_a_model(proxy):
    only_mock = (await create_key(proxy, models=["mock"]))["key"]
    with pytest.raises(openai.PermissionDeniedError) as e:
        await _client(proxy, only_mock).responses.create(model="gpt", input="x")
    assert e.value.type == "permission_error"
    with pytest.raises(openai.AuthenticationError):
        await _client(proxy, "sk-wrong").responses.create(model="gpt", input="x")
    with pytest.raises(openai.BadRequestError) as e:
        await _client(proxy).responses.create(model="gpt", input=[{"type": "web_search_call"}])
    assert e.value.param == "input[0].type"


@pytest.mark.parametrize("model", ["gpt", "gpt-r"])
async def test_a_cut_upstream_stream_leaves_one_usage_event(proxy, fake_openai, model):
    fake_openai.mode = "reset_midstream"
    fake_openai.reply = "a b c d e f g h"
    stream = await _client(proxy).responses.create(model=model, input="x", stream=True)
    kinds = []
    with pytest.raises(openai.APIError) if model == "gpt-r" else _no_raise():
        async for ev in stream:
            kinds.append(ev.type)
    if model == "gpt":
        assert kinds[-1] == "response.failed"
    [ev] = await usage_events(proxy)
    assert ev["request_type"] == "responses" and ev["status"] >= 500


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


async def test_a_client_that_hangs_up_leaves_one_event_and_frees_its_slot(start_proxy, fake_openai,
                                                                          fake_anthropic, tmp_path):
    proxy = await start_proxy(ingress_config(fake_openai, fake_anthropic, tmp_path, mock_delay_ms=30,
                                             limits={"models": {"mock": {"max_concurrency": 1}}}))
    await hang_up_after(proxy, "/v1/responses", {"model": "mock", "input": "x", "stream": True},
                        b"response.output_text.delta")
    [ev] = await usage_events(proxy)
    assert ev["request_type"] == "responses" and ev["status"] == 499
    res = await _client(proxy).responses.create(model="mock", input="x", max_output_tokens=2)
    assert res.status == "incomplete" and res.usage.output_tokens == 2


async def test_a_converted_answer_is_cached_and_each_hit_is_a_new_stored_response(proxy):
    client = _client(proxy)
    first = await client.responses.with_raw_response.create(model="mock", input="x", extra_body={"cache": True})
    hit = await client.responses.with_raw_response.create(model="mock", input="x", extra_body={"cache": True})
    assert first.headers["x-llm-cache"] == "MISS" and hit.headers["x-llm-cache"] == "HIT"
    a, b = first.parse(), hit.parse()
    assert a.output_text == b.output_text and a.id != b.id
    assert (await client.responses.retrieve(b.id)).output_text == a.output_text


@pytest.mark.parametrize("store", ["ledger", "kv"])
async def test_stored_responses_in_either_store_expire(start_proxy, fake_openai, fake_anthropic, tmp_path, store):
    import asyncio
    cfg = ingress_config(fake_openai, fake_anthropic, tmp_path, responses={"store": store, "store_ttl": 0.3})
    client = _client(await start_proxy(cfg))
    first = await client.responses.create(model="mock", input="hello")
    assert (await client.responses.retrieve(first.id)).id == first.id
    await client.responses.create(model="mock", input="again", previous_response_id=first.id)
    await asyncio.sleep(0.35)
    with pytest.raises(openai.BadRequestError) as e:
        await client.responses.create(model="mock", input="later", previous_response_id=first.id)
    assert e.value.code == "previous_response_not_found"


async def test_a_ledger_stored_response_outlives_the_replica_that_made_it(start_proxy, fake_openai,
                                                                          fake_anthropic, tmp_path,
                                                                          ledger_url):  # noqa: F811
    cfg = ingress_config(fake_openai, fake_anthropic, tmp_path, database=ledger_url)   # SQLite and PostgreSQL
    first = await _client(await start_proxy(cfg)).responses.create(model="mock", input="hello")
    other = _client(await start_proxy(cfg))               # another replica on the same ledger
    res = await other.responses.create(model="mock", input="again", previous_response_id=first.id)
    assert res.previous_response_id == first.id
