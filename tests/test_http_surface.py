"""HTTP concerns: health, readiness, body limits, unknown routes, CORS, request ids."""

from __future__ import annotations

import aiohttp
import orjson

from tests.conftest import MASTER, make_config

AUTH = {"Authorization": f"Bearer {MASTER}"}


async def test_health_ready_and_unknown_route(start_proxy):
    server = await start_proxy(make_config())
    async with aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/health")) as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(server.make_url("/ready")) as r:
            assert r.status == 200 and (await r.json())["checks"]["config"] is True
        async with s.get(server.make_url("/v1/nothing-here"), headers=AUTH) as r:
            body = await r.json()
            assert r.status == 404 and set(body["error"]) == {"message", "type", "param", "code"}
        async with s.get(server.make_url("/v1/chat/completions"), headers=AUTH) as r:
            assert r.status == 405 and "error" in await r.json()


async def test_body_over_limit_is_413(start_proxy):
    server = await start_proxy(make_config(server={"max_body_bytes": 1000}))
    big = {"model": "mock", "messages": [{"role": "user", "content": "x" * 2000}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/v1/chat/completions"), headers=AUTH, data=orjson.dumps(big)) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"


async def test_cors_preflight_and_exposed_headers_on_streams(start_proxy):
    server = await start_proxy(make_config(server={"cors_origins": ["http://app.example"]}))
    async with aiohttp.ClientSession() as s:
        async with s.options(server.make_url("/v1/chat/completions"), headers={
                "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"}) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "http://app.example"
            assert "authorization" in r.headers["Access-Control-Allow-Headers"]
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        async with s.post(server.make_url("/v1/chat/completions"), data=orjson.dumps(body),
                          headers={**AUTH, "Origin": "http://app.example"}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "http://app.example"
            assert "x-request-id" in r.headers["Access-Control-Expose-Headers"]
            assert (await r.read()).endswith(b"[DONE]\n\n")
        async with s.options(server.make_url("/v1/chat/completions"), headers={
                "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_client_request_id_is_echoed(start_proxy):
    server = await start_proxy(make_config())
    body = {"model": "mock", "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/v1/chat/completions"), data=orjson.dumps(body),
                          headers={**AUTH, "x-request-id": "abc-123"}) as r:
            assert r.headers["x-request-id"] == "abc-123"
        async with s.post(server.make_url("/v1/chat/completions"), data=orjson.dumps(body),
                          headers={**AUTH, "x-request-id": "bad id with spaces"}) as r:
            assert r.headers["x-request-id"].startswith("req_")
