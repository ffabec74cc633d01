"""Contract tests with the official openai SDK, sync and async, as the client."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.conftest import MASTER

MSG = [{"role": "user", "content": "Say hello"}]


def _clients(server, key: str = MASTER):
    base = str(server.make_url("/v1"))
    return (openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0),
            openai.OpenAI(base_url=base, api_key=key, max_retries=0))


async def test_async_create_plain_and_stream(proxy_to_fake, fake_openai):
    aclient, _ = _clients(proxy_to_fake)
    res = await aclient.chat.completions.create(model="gpt", messages=MSG)
    assert res.choices[0].message.content == fake_openai.reply
    assert res.usage is not None and res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    stream = await aclient.chat.completions.create(model="gpt", messages=MSG, stream=True,
                                                   stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == fake_openai.reply
    assert usage is not None and usage.prompt_tokens == 11


async def test_sync_client_plain_stream_and_models(proxy_to_fake):
    _, client = _clients(proxy_to_fake)

    def run():
        res = client.chat.completions.create(model="mock", messages=MSG, max_tokens=5)
        text = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model="mock", messages=MSG, max_tokens=5, stream=True)
                       if c.choices)
        return res, text, [m.id for m in client.models.list()], client.models.retrieve("gpt").id

    res, text, ids, one = await asyncio.to_thread(run)
    assert res.choices[0].finish_reason == "length"
    assert res.usage.completion_tokens == 5
    assert text == res.choices[0].message.content          # the mock is deterministic per prompt
    assert ids == ["gpt", "mock"]
    assert one == "gpt"


async def test_errors_arrive_as_sdk_exceptions(proxy_to_fake, fake_openai):
    aclient, _ = _clients(proxy_to_fake)
    bad_key, _ = _clients(proxy_to_fake, key="sk-wrong")
    with pytest.raises(openai.AuthenticationError) as e:
        await bad_key.chat.completions.create(model="gpt", messages=MSG)
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as e:
        await aclient.chat.completions.create(model="gpt", messages=[])
    assert e.value.param == "messages"
    with pytest.raises(openai.NotFoundError) as e:
        await aclient.chat.completions.create(model="no-such-model", messages=MSG)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await aclient.models.retrieve("no-such-model")
    fake_openai.mode = "error500"
    with pytest.raises(openai.InternalServerError) as e:
        await aclient.chat.completions.create(model="gpt", messages=MSG)
    assert e.value.status_code == 502
    fake_openai.mode = "error400"
    with pytest.raises(openai.BadRequestError) as e:
        await aclient.chat.completions.create(model="gpt", messages=MSG)
    assert e.value.param == "temperature"


async def test_midstream_failure_raises_in_sdk(proxy_to_fake, fake_openai):
    fake_openai.mode = "reset_midstream"
    fake_openai.reply = "a b c d e f g h"
    aclient, _ = _clients(proxy_to_fake)
    stream = await aclient.chat.completions.create(model="gpt", messages=MSG, stream=True)
    got = ""
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            got += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert got and got != fake_openai.reply


async def test_embeddings_through_sdk(proxy_to_fake, fake_openai):
    aclient, _ = _clients(proxy_to_fake)
    res = await aclient.embeddings.create(model="gpt", input=["a", "b"])
    assert [d.index for d in res.data] == [0, 1]
    assert fake_openai.requests[-1]["input"] == ["a", "b"]
    mock = await aclient.embeddings.create(model="mock", input="same")
    again = await aclient.embeddings.create(model="mock", input="same")
    assert mock.data[0].embedding == again.data[0].embedding
    with pytest.raises(openai.BadRequestError) as e:
        await aclient.embeddings.create(model="mock", input=[])
    assert e.value.param == "input"
