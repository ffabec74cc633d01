"""POST /v1/chat/completions over real HTTP: pass-through, streaming relay, faults, error envelopes."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from multidict import CIMultiDict

from tests.conftest import MASTER

AUTH = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hi"}]


async def post(server, body, headers=AUTH):
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/v1/chat/completions"), data=orjson.dumps(body), headers=headers) as r:
            return r.status, CIMultiDict(r.headers), await r.read()


async def test_non_stream_passes_unknown_fields_and_replaces_credentials(proxy_to_fake, fake_openai):
    body = {"model": "gpt", "messages": MSG, "seed": 7, "logprobs": True, "brand_new_param": {"x": [1, 2]},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "response_format": {"type": "json_object"}}
    status, headers, raw = await post(proxy_to_fake, body)
    assert status == 200, raw
    data = orjson.loads(raw)
    assert data["choices"][0]["message"]["content"] == fake_openai.reply
    assert data["usage"]["prompt_tokens"] == 11
    got = fake_openai.requests[-1]
    assert got["model"] == "gpt-4o-mini"
    for k in ("seed", "logprobs", "brand_new_param", "tools", "response_format"):
        assert got[k] == body[k]
    sent = fake_openai.headers[-1]
    assert sent["Authorization"] == "Bearer sk-upstream-secret"
    assert MASTER not in str(sent)
    assert headers["x-llm-provider"] == "up"
    assert headers["x-request-id"].startswith("req_")


async def test_stream_is_relayed_byte_for_byte_with_keepalive_and_done(proxy_to_fake, fake_openai):
    status, headers, raw = await post(proxy_to_fake, {"model": "gpt", "messages": MSG, "stream": True,
                                                      "stream_options": {"include_usage": True}})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert raw.startswith(b": keep-alive\n\n")
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'"usage":{"prompt_tokens":11' in raw        # client asked for usage: it is kept


async def test_stream_usage_is_requested_upstream_and_stripped_when_client_did_not_ask(proxy_to_fake, fake_openai):
    status, _, raw = await post(proxy_to_fake, {"model": "gpt", "messages": MSG, "stream": True})
    assert status == 200
    assert fake_openai.requests[-1]["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in raw
    text = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in raw.split(b"\n") if line.startswith(b"data: {"))
    assert text == fake_openai.reply


async def test_upstream_500_before_first_byte_is_json_502(proxy_to_fake, fake_openai):
    fake_openai.mode = "error500"
    status, _, raw = await post(proxy_to_fake, {"model": "gpt", "messages": MSG, "stream": True})
    assert status == 502
    assert orjson.loads(raw)["error"]["message"] == "upstream exploded"


async def test_upstream_400_keeps_status_and_message(proxy_to_fake, fake_openai):
    fake_openai.mode = "error400"
    status, _, raw = await post(proxy_to_fake, {"model": "gpt", "messages": MSG})
    err = orjson.loads(raw)["error"]
    assert status == 400
    assert err["message"] == "Invalid value for 'temperature'."
    assert err["param"] == "temperature"


async def test_reset_midstream_ends_with_sse_error_event(proxy_to_fake, fake_openai):
    fake_openai.mode = "reset_midstream"
    fake_openai.reply = "one two three four five six"
    status, _, raw = await post(proxy_to_fake, {"model": "gpt", "messages": MSG, "stream": True})
    assert status == 200
    assert b"data: [DONE]" not in raw
    tail = raw.rstrip().split(b"\n\n")[-1]
    assert tail.startswith(b"event: error\ndata: ")
    assert orjson.loads(tail.split(b"data: ", 1)[1])["error"]["type"] == "upstream_error"


async def test_slow_first_byte_is_504(proxy_to_fake, fake_openai):
    fake_openai.mode = "slow_first_byte"
    fake_openai.delay = 3
    status, _, raw = await post(proxy_to_fake, {"model": "gpt", "messages": MSG})
    assert status == 504
    assert orjson.loads(raw)["error"]["code"] == "upstream_timeout"


async def test_refused_connection_is_502(start_proxy):
    from tests.conftest import make_config
    cfg = make_config(providers={"dead": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                      models=[{"name": "m", "targets": [{"provider": "dead", "model": "x"}]}])
    server = await start_proxy(cfg)
    status, _, raw = await post(server, {"model": "m", "messages": MSG})
    assert status == 502
    assert "connection failed" in orjson.loads(raw)["error"]["message"]


async def test_client_disconnect_cancels_upstream(proxy_to_fake, fake_openai):
    fake_openai.reply = " ".join(["w"] * 200)
    fake_openai.delay = 0.02
    async with aiohttp.ClientSession() as s:
        r = await s.post(proxy_to_fake.make_url("/v1/chat/completions"), headers=AUTH,
                         data=orjson.dumps({"model": "gpt", "messages": MSG, "stream": True}))
        await r.content.readline()
        r.close()
    for _ in range(100):
        if fake_openai.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake_openai.cancelled == 1


async def test_errors_are_openai_envelopes(proxy_to_fake):
    cases = [
        (b"{not json", AUTH, 400, None),
        (orjson.dumps({"messages": MSG}), AUTH, 400, "model"),
        (orjson.dumps({"model": "gpt"}), AUTH, 400, "messages"),
        (orjson.dumps({"model": "gpt", "messages": "hi"}), AUTH, 400, "messages"),
        (orjson.dumps({"model": "gpt", "messages": [{"role": "wizard", "content": "x"}]}), AUTH, 400,
         "messages[0].role"),
        (orjson.dumps({"model": "gpt", "messages": MSG, "stream": "yes"}), AUTH, 400, "stream"),
        (orjson.dumps({"model": "gpt", "messages": MSG, "temperature": 9}), AUTH, 400, "temperature"),
        (orjson.dumps({"model": "nope", "messages": MSG}), AUTH, 404, "model"),
        (orjson.dumps({"model": "gpt", "messages": MSG}), {}, 401, None),
        (orjson.dumps({"model": "gpt", "messages": MSG}), {"Authorization": "Bearer wrong"}, 401, None),
    ]
    async with aiohttp.ClientSession() as s:
        for raw, headers, want, param in cases:
            async with s.post(proxy_to_fake.make_url("/v1/chat/completions"), data=raw, headers=headers) as r:
                body = await r.json()
                assert r.status == want, (raw, body)
                assert set(body["error"]) == {"message", "type", "param", "code"}
                assert body["error"]["param"] == param
                if want == 401:
                    assert body["error"]["code"] == "invalid_api_key"
                    assert "wrong" not in body["error"]["message"]
