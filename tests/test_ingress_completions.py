"""POST /v1/completions (legacy) with the official openai SDK: passed through to OpenAI-type targets, refused
for targets without the endpoint; one usage event per call however it ends."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import MASTER
from tests.ingress_helpers import hang_up_after, ingress_config, usage_events


def _client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)


@pytest.fixture
async def proxy(start_proxy, fake_openai, fake_anthropic, tmp_path):
    return await start_proxy(ingress_config(fake_openai, fake_anthropic, tmp_path))


async def test_json_and_stream_pass_through(proxy, fake_openai):
    client = _client(proxy)
    res = await client.completions.create(model="gpt", prompt="Say hello", max_tokens=20)
    assert res.choices[0].text == fake_openai.reply and res.usage.prompt_tokens == 7
    assert fake_openai.requests[-1]["model"] == "gpt-4o-mini" and fake_openai.requests[-1]["prompt"] == "Say hello"
    stream = await client.completions.create(model="gpt", prompt="Say hello", stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == fake_openai.reply
    assert all(c.usage is None for c in chunks)        # asked upstream for the ledger, not shown to the client
    assert fake_openai.requests[-1]["stream_options"] == {"include_usage": True}
    evs = await usage_events(proxy, 2)
    assert [e["request_type"] for e in evs] == ["completions", "completions"]
    assert all(e["tokens"]["prompt"] == 7 and not e["estimated"] for e in evs)


async def test_targets_without_the_endpoint_and_bad_input(proxy):
    client = _client(proxy)
    for model in ("mock", "claude"):
        with pytest.raises(openai.BadRequestError) as e:
            await client.completions.create(model=model, prompt="x")
        assert e.value.code == "unsupported_endpoint"
    with pytest.raises(openai.BadRequestError) as e:
        await client.completions.create(model="gpt", prompt=[])
    assert e.value.param == "prompt"


async def test_a_cut_stream_and_a_client_that_hangs_up_leave_one_event_each(start_proxy, fake_openai,
                                                                            fake_anthropic, tmp_path):
    proxy = await start_proxy(ingress_config(fake_openai, fake_anthropic, tmp_path,
                                             limits={"models": {"gpt": {"max_concurrency": 1}}}))
    fake_openai.mode, fake_openai.reply = "reset_midstream", "a b c d e f g h"
    stream = await _client(proxy).completions.create(model="gpt", prompt="x", stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    [cut] = await usage_events(proxy)
    assert cut["request_type"] == "completions" and cut["status"] == 502
    fake_openai.mode, fake_openai.delay = "ok", 0.03
    fake_openai.reply = " ".join(f"w{i}" for i in range(40))
    await hang_up_after(proxy, "/v1/completions", {"model": "gpt", "prompt": "x", "stream": True}, b"w3")
    evs = await usage_events(proxy, 2)
    assert len(evs) == 2 and {e["status"] for e in evs} == {502, 499}
    fake_openai.delay = 0
    assert (await _client(proxy).completions.create(model="gpt", prompt="x")).choices   # the slot is free


async def test_caps_routing_fields_and_a_key_refused_a_model(proxy):
    from tests.keys_helpers import create_key
    client = _client(proxy)
    with pytest.raises(openai.BadRequestError) as e:
        await client.completions.create(model="gpt", prompt="x", max_tokens=10_000_000)
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        await client.completions.create(model="gpt", prompt="x", extra_body={"api_base": "http://evil"})
    assert e.value.param == "api_base"
    only_mock = (await create_key(proxy, models=["mock"]))["key"]
    refused = openai.AsyncOpenAI(base_url=str(proxy.make_url("/v1")), api_key=only_mock, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        await refused.completions.create(model="gpt", prompt="x")
    assert e.value.type == "permission_error"
