"""Hostile input at the HTTP edge: refused fields and values (400 naming the field), bad JSON, non-JSON
bodies (415), CORS on every answer, slow headers and short bodies (deadlines shrunk by config)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import MASTER, make_config, openai_provider

AUTH = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hi"}]
ORIGIN = "http://app.example"


async def _post(server, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url(path), data=data, headers=headers) as r:
            return r.status, orjson.loads(await r.read()), dict(r.headers)


@pytest.mark.parametrize("field", ["api_base", "base_url", "api_key", "azure_endpoint", "aws_secret_access_key",
                                   "extra_headers"])
async def test_a_body_that_picks_the_upstream_url_or_key_is_refused_naming_it(start_proxy, fake_openai, field):
    cfg = make_config(providers={"up": openai_provider(fake_openai)},
                      models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]}])
    server = await start_proxy(cfg)
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="gpt", messages=MSG,
                                             extra_body={field: "http://169.254.169.254/latest"})
    assert e.value.status_code == 400 and e.value.body["param"] == field
    assert e.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as e:
        await client.embeddings.create(model="gpt", input="x", extra_body={field: "x"})
    assert e.value.body["param"] == field
    await client.close()
    assert fake_openai.requests == []                  # nothing reached the provider


@pytest.mark.parametrize("name,value,cap", [("n", 0, None), ("n", 129, None), ("n", "2", None),
                                            ("max_tokens", 0, None), ("max_tokens", 1001, 1000),
                                            ("max_completion_tokens", -5, None),
                                            ("max_completion_tokens", 5000, 1000)])
async def test_out_of_range_counts_are_400_naming_the_field(start_proxy, name, value, cap):
    server = await start_proxy(make_config(server={"max_output_tokens": cap} if cap else {}))
    st, body, _ = await _post(server, "/v1/chat/completions",
                              orjson.dumps({"model": "mock", "messages": MSG, name: value}), AUTH)
    assert st == 400 and body["error"]["param"] == name, body
    ok = {"model": "mock", "messages": MSG, "n": 128, "max_tokens": cap or 262_144}
    assert (await _post(server, "/v1/chat/completions", orjson.dumps(ok), AUTH))[0] == 200


async def test_bad_json_has_code_invalid_json_and_a_non_json_body_is_415(start_proxy):
    server = await start_proxy(make_config())
    st, body, _ = await _post(server, "/v1/chat/completions", b'{"model": "mock",',
                              {**AUTH, "Content-Type": "application/json"})
    assert st == 400 and body["error"]["code"] == "invalid_json"
    for ctype in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; b=x"):
        st, body, _ = await _post(server, "/v1/chat/completions",
                                  orjson.dumps({"model": "mock", "messages": MSG}), {**AUTH, "Content-Type": ctype})
        assert st == 415 and body["error"]["code"] == "unsupported_media_type", ctype
    st, _, _ = await _post(server, "/v1/chat/completions", orjson.dumps({"model": "mock", "messages": MSG}),
                           {**AUTH, "Content-Type": "application/json; charset=utf-8"})
    assert st == 200


async def test_cors_headers_on_every_answer_errors_included(start_proxy):
    cfg = make_config(server={"cors_origins": [ORIGIN]}, limits={"master": {"rpm": 1}})
    server = await start_proxy(cfg)
    o = {"Origin": ORIGIN}
    body = orjson.dumps({"model": "mock", "messages": MSG})
    seen = {}
    async with aiohttp.ClientSession() as s:
        for name, method, path, headers in (
                ("401", "POST", "/v1/chat/completions", {"Authorization": "Bearer sk-wrong-key-000000"}),
                ("404", "GET", "/v1/nothing-here", AUTH), ("200", "POST", "/v1/chat/completions", AUTH),
                ("429", "POST", "/v1/chat/completions", AUTH), ("415", "POST", "/v1/chat/completions",
                                                               {**AUTH, "Content-Type": "text/plain"})):
            async with s.request(method, server.make_url(path), data=body, headers={**headers, **o}) as r:
                await r.read()
                seen[name] = r.status
                assert r.headers.get("Access-Control-Allow-Origin") == ORIGIN, (name, dict(r.headers))
                assert "retry-after" in r.headers["Access-Control-Expose-Headers"]
        assert seen == {"401": 401, "404": 404, "200": 200, "429": 429, "415": 415}
        pre = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        async with s.options(server.make_url("/v1/chat/completions"), headers=pre) as r:
            err = await r.json()
            assert r.status == 403 and err["error"]["code"] == "cors_origin_not_allowed"
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_a_preflight_with_no_origins_configured_is_403_not_405(start_proxy):
    server = await start_proxy(make_config())
    async with aiohttp.ClientSession() as s:
        async with s.options(server.make_url("/v1/chat/completions"),
                             headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 403 and (await r.json())["error"]["type"] == "permission_error"


async def _read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    out = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            out += chunk
    return out


async def test_slow_header_sockets_are_closed_at_the_header_deadline(start_proxy):
    """20 sockets each send a header byte every 20 ms and never a blank line. The server closes each one
    while it is still sending: the measure is how many bytes went out before the close (a deadline of 0.3 s
    is ~15 ticks), not the wall clock, which a loaded machine stretches."""
    server = await start_proxy(make_config(server={"header_timeout": 0.3}))
    conns = [await asyncio.open_connection(server.host, server.port) for _ in range(20)]
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400
    sent_at_close: dict[int, int] = {}
    for i in range(len(request)):
        for n, (r, w) in enumerate(conns):
            if n in sent_at_close:
                continue
            if r.at_eof():
                sent_at_close[n] = i
                continue
            try:
                w.write(request[i:i + 1])
            except (ConnectionError, RuntimeError):
                sent_at_close[n] = i
        if len(sent_at_close) == len(conns):
            break
        await asyncio.sleep(0.02)
    for n, (r, _) in enumerate(conns):           # any left: is it closed now?
        if n not in sent_at_close:
            with contextlib.suppress(ConnectionResetError):    # closed with our bytes unread: a reset
                await _read_until_closed(r, 0.5)
            sent_at_close[n] = len(request)
    assert len(sent_at_close) == 20
    assert max(sent_at_close.values()) < len(request) // 2, sent_at_close    # closed mid-header, every one
    for _, w in conns:
        w.close()


async def test_a_body_shorter_than_its_content_length_gets_408_and_the_connection_closes(start_proxy):
    server = await start_proxy(make_config(server={"body_timeout": 0.2}))
    reader, writer = await asyncio.open_connection(server.host, server.port)
    body = orjson.dumps({"model": "mock", "messages": MSG})
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + MASTER.encode() + b"\r\nContent-Length: %d\r\n\r\n" % (len(body) + 50)
                 + body)
    await writer.drain()
    t0 = time.monotonic()
    raw = await _read_until_closed(reader, 2.0)        # EOF: the server closed the connection
    assert time.monotonic() - t0 < 1.5
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), raw[:200]
    assert orjson.loads(payload)["error"]["code"] == "request_timeout"
    writer.close()
