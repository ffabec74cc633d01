"""POST /v1/requests, the seed's envelope: every option honoured, and a 400 naming the envelope path."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import MASTER, make_config
from tests.cost_helpers import ADMIN, request

MSG = [{"role": "user", "content": "envelope please"}]


def _env(**opts) -> dict:
    md = opts.pop("metadata", None)
    req: dict = {"model": "mock", "messages": MSG}
    if opts:
        req["options"] = opts
    if md is not None:
        req["metadata"] = md
    return {"request": req}


async def _post(url: str, body: dict) -> tuple[int, dict, dict]:
    st, b, h = await request(url, "POST", "/v1/requests", body)
    return st, b, {k.lower(): v for k, v in h.items()}


async def _usage(url: str, rid: str) -> dict:
    for _ in range(100):
        st, b, _ = await request(url, "GET", f"/v1/usage?request_id={rid}")
        if st == 200 and b["data"]:
            return b["data"][0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no usage event for {rid}")


async def test_envelope_answers_chat_completion_and_honours_options(start_proxy, tmp_path):
    server = await start_proxy(make_config(storage={"database": f"sqlite:///{tmp_path}/l.db"}))
    url = str(server.make_url(""))
    st, b, h = await _post(url, _env(
        max_tokens=3, temperature=0.5, batch_id="grp-1",
        metadata={"source_id": "app-7", "source_type": "application", "budget_id": "bud-1"}))
    assert st == 200, b
    assert b["object"] == "chat.completion" and b["usage"]["completion_tokens"] == 3
    assert b["choices"][0]["finish_reason"] == "length"
    ev = await _usage(url, h["x-request-id"])
    assert ev["metadata"]["batch_id"] == "grp-1" and ev["metadata"]["budget_id"] == "bud-1"
    assert ev["source"] == {"type": "application", "id": "app-7"} and ev["metadata"]["async"] is False
    # cache: opt-in mode, the option turns it on: a second identical call is a hit
    st, _, h1 = await _post(url, _env(cache=True, max_tokens=4))
    st2, _, h2 = await _post(url, _env(cache=True, max_tokens=4))
    assert (st, st2) == (200, 200) and h1["x-llm-cache"] == "MISS" and h2["x-llm-cache"] == "HIT"
    st, _, h3 = await _post(url, _env(cache=False, max_tokens=4))
    assert st == 200 and h3["x-llm-cache"] == "BYPASS"


async def test_envelope_stream_is_openai_sse(start_proxy):
    server = await start_proxy(make_config())
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/v1/requests"), headers=ADMIN,
                                                    json=_env(stream=True, max_tokens=5)) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    assert raw.rstrip().endswith("data: [DONE]")
    assert raw.count('"object":"chat.completion.chunk"') >= 5


async def test_envelope_priority_uses_the_reserved_share(start_proxy):
    # 2 requests a minute, half of them reserved for high priority: a low-priority call gets one
    cfg = make_config(limits={"global": {"rpm": 2, "priority_reserve": 0.5}})
    url = str((await start_proxy(cfg)).make_url(""))
    st1, _, _ = await _post(url, _env(metadata={"priority": 0}))
    st2, b2, _ = await _post(url, _env(metadata={"priority": 0}))
    st3, _, _ = await _post(url, _env(metadata={"priority": "high"}))
    assert (st1, st2, st3) == (200, 429, 200), b2


@pytest.mark.parametrize(("body", "param"), [
    ({}, "request"),
    ({"request": []}, "request"),
    ({"request": {"messages": MSG}}, "request.model"),
    ({"request": {"model": "mock", "messages": MSG, "options": {"max_tokens": "9"}}}, "request.options.max_tokens"),
    ({"request": {"model": "mock", "messages": MSG, "options": {"max_tokens": 0}}}, "request.options.max_tokens"),
    ({"request": {"model": "mock", "messages": MSG, "options": {"temperature": 3}}}, "request.options.temperature"),
    ({"request": {"model": "mock", "messages": MSG, "options": {"stream": "yes"}}}, "request.options.stream"),
    ({"request": {"model": "mock", "messages": MSG, "options": {"cache": 1}}}, "request.options.cache"),
    ({"request": {"model": "mock", "messages": MSG, "options": {"batch_id": 5}}}, "request.options.batch_id"),
    ({"request": {"model": "mock", "messages": MSG, "options": {"bogus": 5}}}, "request.options.bogus"),
    ({"request": {"model": "mock", "messages": MSG, "metadata": {"priority": "low"}}}, "request.metadata.priority"),
    ({"request": {"model": "mock", "messages": MSG, "metadata": {"source_id": 1}}}, "request.metadata.source_id"),
    ({"request": {"model": "mock", "messages": [{"role": "robot", "content": "x"}]}}, "request.messages[0].role"),
    ({"request": {"model": "mock"}}, "request.messages"),
])
async def test_bad_envelope_names_the_path(start_proxy, body, param):
    url = str((await start_proxy(make_config())).make_url(""))
    st, b, _ = await request(url, "POST", "/v1/requests", body)
    assert st == 400 and b["error"]["param"] == param, b
    assert param in b["error"]["message"] or param == "request"


async def test_envelope_needs_a_key(start_proxy):
    url = str((await start_proxy(make_config())).make_url(""))
    st, b, _ = await request(url, "POST", "/v1/requests", _env(), headers={"Authorization": "Bearer nope"})
    assert st == 401 and b["error"]["code"] == "invalid_api_key"
    assert MASTER not in str(b)
