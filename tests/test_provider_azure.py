"""The Azure OpenAI adapter end to end: the official openai SDK -> proxy -> a fake Azure resource that insists
on the deployment URL, the api-version query and the api-key header."""

from __future__ import annotations

import aiohttp
import openai
import orjson
import pytest

from proxy.config import Target
from proxy.context import ChatCall
from proxy.providers.registry import provider_class
from proxy.upstream import HttpTransport
from tests.conftest import MASTER, make_config
from tests.fakes.azure_upstream import API_KEY, FakeAzure

MSG = [{"role": "user", "content": "Say hello"}]
TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
         for name in ("get_weather", "get_time")]


def _azure(fake: FakeAzure, **extra) -> dict:
    return {"type": "azure", "base_url": str(fake.server.make_url("")).rstrip("/"), "api_key": API_KEY,
            "timeouts": {"first_byte": 2, "idle": 2, "total": 10}, **extra}


@pytest.fixture
async def fake_azure(aiohttp_server) -> FakeAzure:
    fake = FakeAzure()
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
async def proxy(start_proxy, fake_azure):
    cfg = make_config(providers={"az": _azure(fake_azure)},
                      models=[{"name": "gpt", "targets": [{"provider": "az", "model": "gpt-4o-mini"}]},
                              {"name": "embed", "targets": [{"provider": "az", "model": "text-embedding-3-small"}]}])
    return await start_proxy(cfg)


def _client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)


async def test_plain_chat_uses_deployment_url_api_version_and_api_key(proxy, fake_azure):
    res = await _client(proxy).chat.completions.create(model="gpt", messages=MSG, extra_body={"brand_new": 1})
    assert res.choices[0].message.content == fake_azure.reply
    assert res.usage.total_tokens == 15
    assert fake_azure.paths[-1] == "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    assert fake_azure.requests[-1]["brand_new"] == 1                       # unknown fields pass through
    headers = {k.lower(): v for k, v in fake_azure.headers[-1].items()}
    assert headers["api-key"] == API_KEY
    assert "authorization" not in headers
    assert MASTER not in str(headers)
    # Azure's extra fields reach the client untouched
    assert res.model_extra["prompt_filter_results"][0]["prompt_index"] == 0


async def test_azure_sdk_style_client_key_is_not_forwarded(proxy, fake_azure):
    """A client sending its key the Azure SDK way (`api-key`) is authenticated; only our key goes upstream."""
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.make_url("/v1/chat/completions"), headers={"api-key": MASTER},
                          json={"model": "gpt", "messages": MSG}) as r:
            assert r.status == 200, await r.text()
    assert fake_azure.headers[-1]["api-key"] == API_KEY


async def test_stream_relayed_with_prompt_filter_chunk_and_usage(proxy, fake_azure):
    stream = await _client(proxy).chat.completions.create(model="gpt", messages=MSG, stream=True,
                                                          stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == fake_azure.reply and finish == "stop"
    assert usage is not None and usage.total_tokens == 15


async def test_stream_usage_requested_upstream_but_stripped_for_the_client(proxy, fake_azure):
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.make_url("/v1/chat/completions"), headers={"Authorization": f"Bearer {MASTER}"},
                          json={"model": "gpt", "messages": MSG, "stream": True}) as r:
            raw = await r.read()
    assert fake_azure.requests[-1]["stream_options"] == {"include_usage": True}
    assert b'"prompt_filter_results"' in raw                  # Azure's first chunk is relayed as it came
    assert b'"usage"' not in raw
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_tools_plain_and_streamed(proxy, fake_azure):
    fake_azure.mode = "tools"
    client = _client(proxy)
    res = await client.chat.completions.create(model="gpt", messages=MSG, tools=TOOLS)
    assert res.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in res.choices[0].message.tool_calls] == ["get_weather", "get_time"]
    stream = await client.chat.completions.create(model="gpt", messages=MSG, tools=TOOLS, stream=True)
    calls: dict[int, list[str]] = {}
    async for chunk in stream:
        if not chunk.choices:
            continue
        for d in chunk.choices[0].delta.tool_calls or []:
            c = calls.setdefault(d.index, ["", ""])
            c[0] += d.function.name or ""
            c[1] += d.function.arguments or ""
    assert calls == {0: ["get_weather", '{"city":"Paris"}'], 1: ["get_time", '{"city":"Paris"}']}


async def test_embeddings(proxy, fake_azure):
    res = await _client(proxy).embeddings.create(model="embed", input=["a", "b"], encoding_format="float")
    assert [d.embedding for d in res.data] == [[0.25, 0.5, 0.75]] * 2
    assert fake_azure.paths[-1] == "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21"


async def test_content_filter_error_and_filtered_finish(proxy, fake_azure):
    client = _client(proxy)
    fake_azure.mode = "content_filter"
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="gpt", messages=MSG)
    assert e.value.code == "content_filter"
    assert "content management policy" in e.value.message
    fake_azure.mode = "filtered"
    res = await client.chat.completions.create(model="gpt", messages=MSG)
    assert res.choices[0].finish_reason == "content_filter"


async def test_rate_limit_is_429_and_retry_after_ms_is_read(proxy, fake_azure):
    fake_azure.mode = "error429"
    with pytest.raises(openai.RateLimitError) as e:
        await _client(proxy).chat.completions.create(model="gpt", messages=MSG)
    assert e.value.code == "rate_limit_exceeded"
    p = _adapter(fake_azure)
    err = p.error_from_wire(429, b'{"error":{"code":"429","message":"slow down"}}',
                            {"retry-after": "2", "retry-after-ms": "1500"})
    assert err.retry_after == 1.5 and err.retryable


async def test_bearer_auth_and_deployment_setting(start_proxy, aiohttp_server):
    fake = FakeAzure(api_version="2025-01-01-preview", bearer="entra-token")
    fake.server = await aiohttp_server(fake.app)
    cfg = make_config(providers={"az": {**_azure(fake), "api_key": "entra-token", "auth": "bearer",
                                        "deployment": "prod-4o", "api_version": "2025-01-01-preview"}},
                      models=[{"name": "gpt", "targets": [{"provider": "az", "model": "gpt-4o"}]}])
    server = await start_proxy(cfg)
    res = await _client(server).chat.completions.create(model="gpt", messages=MSG)
    assert res.choices[0].message.content == fake.reply
    assert fake.paths[-1] == "/openai/deployments/prod-4o/chat/completions?api-version=2025-01-01-preview"
    assert "api-key" not in {k.lower() for k in fake.headers[-1]}


async def test_wrong_upstream_key_is_a_gateway_error(start_proxy, fake_azure):
    cfg = make_config(providers={"az": {**_azure(fake_azure), "api_key": "not-the-key"}},
                      models=[{"name": "gpt", "targets": [{"provider": "az", "model": "gpt-4o-mini"}]}])
    server = await start_proxy(cfg)
    with pytest.raises(openai.InternalServerError) as e:
        await _client(server).chat.completions.create(model="gpt", messages=MSG)
    assert e.value.status_code == 502 and e.value.code == "provider_auth_failed" and "'az'" in e.value.message
    assert "not-the-key" not in str(e.value.body)


def _adapter(fake: FakeAzure, **extra):
    cfg = make_config(providers={"az": _azure(fake, **extra)},
                      models=[{"name": "gpt", "targets": [{"provider": "az", "model": "gpt-4o-mini"}]}])
    pc = cfg.providers["az"]
    return provider_class(pc.type)(pc)


async def test_health_request_and_base_url_with_openai_suffix(fake_azure):
    p = _adapter(fake_azure)
    transport = HttpTransport(p.config)
    try:
        resp = await transport.send(p.health_request())
        assert resp.status == 200
        assert orjson.loads(await resp.read())["data"][0]["id"] == "gpt-4o-mini"
    finally:
        await transport.close()
    q = _adapter(fake_azure, base_url=str(fake_azure.server.make_url("/openai/")))
    wire = q.to_wire(ChatCall(body={"model": "gpt", "messages": MSG}, model="gpt", stream=False),
                     Target(provider="az", model="gpt-4o-mini"))
    assert wire.url.endswith("/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21")
    assert "/openai/openai/" not in wire.url
