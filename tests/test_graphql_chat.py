"""chatCompletion (mutation) and chatCompletionStream (subscription, graphql-transport-ws) against the mock
and a fake OpenAI upstream: the same answers and decisions as REST, one usage event each, every ending."""

from __future__ import annotations

import asyncio
import io
import logging

import aiohttp
import orjson
import pytest

from proxy.gateway import GATEWAY
from proxy.telemetry.logging import setup_logging
from tests.conftest import MASTER, make_config, openai_provider
from tests.graphql_helpers import ADMIN, CHAT, STREAM, WSClient, chat_input, codes, gql, ws_connect


@pytest.fixture
def access_lines():
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    buf = io.StringIO()
    setup_logging("info", "json", stream=buf)
    yield lambda: [r for r in (orjson.loads(x) for x in buf.getvalue().splitlines() if x.strip())
                   if r["logger"] == "proxy.access"]
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)


def _config(fake=None, **sections):
    providers = {"local": {"type": "mock", "reply_tokens": 12, **sections.pop("mock", {})}}
    models = [{"name": "mock", "targets": [{"provider": "local", "model": "mock"}],
               "price": {"input": 1.0, "output": 1.0}}]
    if fake is not None:
        providers["up"] = openai_provider(fake, timeouts={"first_byte": 2, "idle": 2, "total": 10})
        models.append({"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]})
    return make_config(providers=providers, models=models, **sections)


async def _events(url: str, request_id: str) -> list[dict]:
    _, doc = await gql(url, "query($f: UsageFilter) { usage(filter: $f) { nodes { requestId status stream "
                            "model ingress usage { completionTokens } } } }", {"f": {"requestId": request_id}})
    return doc["data"]["usage"]["nodes"]


async def _subscribe(url: str, variables: dict, payload: dict | None = None) -> tuple[list[dict], dict]:
    async with aiohttp.ClientSession() as s:
        ws = await ws_connect(s, url)
        c = WSClient(ws)
        ack = await c.init(payload if payload is not None else {"Authorization": f"Bearer {MASTER}"})
        assert ack["type"] == "connection_ack", ack
        op = await c.subscribe(STREAM, variables)
        got, last = await c.collect(op)
        await ws.close()
        return got, last


@pytest.mark.parametrize("model", ["mock", "gpt"])
async def test_rest_mutation_and_subscription_agree(start_proxy, fake_openai, access_lines, model):
    url = str((await start_proxy(_config(fake_openai))).make_url(""))
    inp = chat_input(model, "tell me about llamas")
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", headers=ADMIN,
                                                    json={"model": model, "messages": inp["messages"]}) as r:
        rest = await r.json()
        rest_rid = r.headers["x-request-id"]
    content = rest["choices"][0]["message"]["content"]
    status, doc = await gql(url, CHAT, {"input": inp})
    assert status == 200 and "errors" not in doc, doc
    m = doc["data"]["chatCompletion"]
    assert m["content"] == content and m["finishReason"] == "stop" and m["cached"] is False
    assert m["usage"]["completionTokens"] == rest["usage"]["completion_tokens"]
    assert m["model"] == rest["model"]
    if model == "mock":
        assert m["costUsd"] > 0
    chunks, last = await _subscribe(url, {"input": inp})
    assert last["type"] == "complete", last
    frames = [c["data"]["chatCompletionStream"] for c in chunks]
    assert "errors" not in chunks[-1]
    assert "".join(f["delta"] or "" for f in frames) == content
    assert [f["finishReason"] for f in frames if f["finishReason"]] == ["stop"]
    assert frames[-1]["usage"]["completionTokens"] == m["usage"]["completionTokens"]
    sub_rid = frames[0]["requestId"]
    assert len({f["requestId"] for f in frames}) == 1
    for rid, stream in ((rest_rid, False), (m["requestId"], False), (sub_rid, True)):
        ev = await _events(url, rid)
        assert len(ev) == 1 and ev[0]["status"] == 200 and ev[0]["stream"] is stream, (rid, ev)
        assert ev[0]["ingress"] == ("rest" if rid == rest_rid else "graphql")
    ingress = {rec["request_id"]: rec["ingress"] for rec in access_lines()}
    assert ingress[rest_rid] == "rest"
    assert ingress[m["requestId"]] == ingress[sub_rid] == "graphql"


async def test_same_rate_limit_decisions(start_proxy):
    url = str((await start_proxy(_config())).make_url(""))
    _, doc = await gql(url, 'mutation { createKey(input: {rpm: 2}) { secret } }')
    h = {"Authorization": f"Bearer {doc['data']['createKey']['secret']}"}
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", headers=h,
                                                    json={"model": "mock", "messages": [{"role": "user", "content": "a"}]}) as r:
        assert r.status == 200
    _, doc = await gql(url, CHAT, {"input": chat_input()}, headers=h)
    assert "errors" not in doc
    _, doc = await gql(url, CHAT, {"input": chat_input()}, headers=h)
    assert codes(doc) == ["RATE_LIMITED"] and doc["errors"][0]["extensions"]["errorCode"] == "rate_limit_exceeded"
    chunks, _ = await _subscribe(url, {"input": chat_input()}, {"authorization": h["Authorization"]})
    assert codes(chunks[-1]) == ["RATE_LIMITED"], chunks
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", headers=h,
                                                    json={"model": "mock", "messages": [{"role": "user", "content": "a"}]}) as r:
        assert r.status == 429


async def test_budget_refuses_every_ingress_alike(start_proxy):
    url = str((await start_proxy(_config())).make_url(""))
    async with aiohttp.ClientSession() as s, s.post(url + "/admin/budgets", headers=ADMIN, data=orjson.dumps(
            {"id": "empty", "amount_usd": 0})) as r:
        assert r.status == 200
    inp = chat_input(metadata={"budgetId": "empty"})
    _, doc = await gql(url, CHAT, {"input": inp})
    err = doc["errors"][0]["extensions"]
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", headers=ADMIN, json={
            "model": "mock", "messages": inp["messages"], "metadata": {"budget_id": "empty"}}) as r:
        rest = await r.json()
        assert r.status == err["status"] and rest["error"]["code"] == err["errorCode"]
    chunks, _ = await _subscribe(url, {"input": inp})
    assert chunks[-1]["errors"][0]["extensions"]["errorCode"] == err["errorCode"]


async def test_upstream_errors(start_proxy, fake_openai):
    srv = await start_proxy(_config(fake_openai))
    url = str(srv.make_url(""))
    fake_openai.mode = "error400"
    _, doc = await gql(url, CHAT, {"input": chat_input("gpt", temperature=1.0)})
    ext = doc["errors"][0]["extensions"]
    assert ext["code"] == "BAD_USER_INPUT" and ext["param"] == "temperature" and ext["status"] == 400
    assert "sk-upstream-secret" not in orjson.dumps(doc).decode()
    fake_openai.mode = "reset_midstream"
    chunks, _ = await _subscribe(url, {"input": chat_input("gpt")})
    assert chunks[0]["data"]["chatCompletionStream"]["delta"] == ""
    assert chunks[-1]["data"] is None and codes(chunks[-1])[0] in ("UPSTREAM_ERROR", "UPSTREAM_TIMEOUT"), chunks[-1]
    rid = chunks[0]["data"]["chatCompletionStream"]["requestId"]
    await srv.app[GATEWAY].settled()              # a cut stream's tokens are estimated off the loop first
    ev = await _events(url, rid)
    assert len(ev) == 1 and ev[0]["status"] >= 500


async def _wait_idle(gw, within: float = 3.0) -> None:
    for _ in range(int(within / 0.01)):
        if not gw.inflight:
            break
        await asyncio.sleep(0.01)
    assert gw.inflight == 0 and not gw.open
    await gw.settled()                            # ends still settling (a cut stream's estimate, then the slot)


@pytest.mark.parametrize("how", ["close_socket", "complete"])
async def test_subscription_that_stops_ends_once_and_frees_the_slot(start_proxy, fake_openai, how):
    fake_openai.reply = " ".join(f"word{i}" for i in range(200))
    fake_openai.delay = 0.02
    srv = await start_proxy(_config(fake_openai))
    url, gw = str(srv.make_url("")), srv.app[GATEWAY]
    _, doc = await gql(url, 'mutation { createKey(input: {maxConcurrency: 1}) { secret } }')
    h = {"Authorization": f"Bearer {doc['data']['createKey']['secret']}"}
    async with aiohttp.ClientSession() as s:
        ws = await ws_connect(s, url)
        c = WSClient(ws)
        assert (await c.init(h))["type"] == "connection_ack"
        op = await c.subscribe(STREAM, {"input": chat_input("gpt")})
        for _ in range(5):
            first = await c.recv()
            assert first["type"] == "next", first
        rid = first["payload"]["data"]["chatCompletionStream"]["requestId"]
        assert gw.inflight == 1
        _, busy = await gql(url, CHAT, {"input": chat_input()}, headers=h)   # the one slot is taken
        assert codes(busy) == ["RATE_LIMITED"]
        if how == "complete":
            await ws.send_str(orjson.dumps({"id": op, "type": "complete"}).decode())
            await _wait_idle(gw)
            fake_openai.delay = 0
            op2 = await c.subscribe(STREAM, {"input": chat_input("gpt")})   # the connection still works
            got, last = await c.collect(op2)
            assert last["type"] == "complete" and got[-1]["data"]["chatCompletionStream"]["usage"], got[-1]
        await ws.close()
    await _wait_idle(gw)
    await gw.settled()                            # the cut stream's tokens are estimated off the loop
    assert fake_openai.cancelled >= 1             # the upstream request was cancelled too
    _, doc = await gql(url, CHAT, {"input": chat_input()}, headers=h)        # the slot is free again
    assert "errors" not in doc, doc
    ev = await _events(url, rid)
    assert len(ev) == 1 and ev[0]["status"] == 499 and ev[0]["stream"] is True, ev
    assert 3 <= ev[0]["usage"]["completionTokens"] < 200 * 3


async def test_websocket_auth_and_init_timeout(start_proxy):
    url = str((await start_proxy(_config(graphql={"connection_init_timeout": 0.2}))).make_url(""))
    async with aiohttp.ClientSession() as s:
        ws = await ws_connect(s, url)
        closed = await WSClient(ws).init({"Authorization": "Bearer sk-llm-wrong"})
        assert closed["type"] == "closed" and ws.close_code == 4403
        ws = await ws_connect(s, url)
        closed = await WSClient(ws).init({})
        assert closed["type"] == "closed" and ws.close_code == 4403
        ws = await ws_connect(s, url)                                   # says nothing: closed after the timeout
        closed = await WSClient(ws).recv(within=3)
        assert closed["type"] == "closed" and ws.close_code == 4408
        ws = await ws_connect(s, url, headers=ADMIN)                    # the upgrade's header also works
        c = WSClient(ws)
        assert (await c.init({}))["type"] == "connection_ack"
        op = await c.subscribe("query { me { id } }")
        got, last = await c.collect(op)
        assert got[0]["data"]["me"]["id"] == "master" and last["type"] == "complete"
        await ws.close()
        async with s.ws_connect(url + "/graphql", protocols=("graphql-ws",)) as old:   # legacy protocol: refused
            msg = await old.receive(timeout=3)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and old.close_code == 4406


async def test_subscription_cap_per_connection(start_proxy):
    srv = await start_proxy(_config(graphql={"max_subscriptions": 1}, mock={"reply_tokens": 100, "token_delay_ms": 20}))
    url, gw = str(srv.make_url("")), srv.app[GATEWAY]
    async with aiohttp.ClientSession() as s:
        ws = await ws_connect(s, url)
        c = WSClient(ws)
        assert (await c.init(ADMIN))["type"] == "connection_ack"
        await c.subscribe(STREAM, {"input": chat_input()})
        assert (await c.recv())["type"] == "next"
        op2 = await c.subscribe(STREAM, {"input": chat_input()})
        while True:
            m = await c.recv()
            if m.get("id") == op2:
                break
        assert m["type"] == "error" and "limit" in m["payload"][0]["message"]
        await ws.close()
    await _wait_idle(gw)


async def test_drain_ends_a_subscription_with_an_error(start_proxy, fake_openai):
    from proxy.cli import drain_calls

    fake_openai.reply = " ".join(f"word{i}" for i in range(200))
    fake_openai.delay = 0.02
    srv = await start_proxy(_config(fake_openai))
    url, gw = str(srv.make_url("")), srv.app[GATEWAY]
    async with aiohttp.ClientSession() as s:
        ws = await ws_connect(s, url)
        c = WSClient(ws)
        assert (await c.init(ADMIN))["type"] == "connection_ack"
        op = await c.subscribe(STREAM, {"input": chat_input("gpt")})
        first = await c.recv()
        rid = first["payload"]["data"]["chatCompletionStream"]["requestId"]
        gw.accepting = False
        await drain_calls(gw, 0.05)
        got, last = await c.collect(op)
        assert last["type"] == "complete"
        assert got[-1]["errors"][0]["extensions"]["errorCode"] == "gateway_shutting_down"
        op2 = await c.subscribe(STREAM, {"input": chat_input("gpt")})     # new calls are refused
        got, _ = await c.collect(op2)
        assert codes(got[-1]) == ["UNAVAILABLE"]
        await ws.close()
    gw.accepting = True
    await _wait_idle(gw)
    ev = await _events(url, rid)
    assert len(ev) == 1 and ev[0]["status"] == 503, ev


async def test_a_key_revoked_while_its_websocket_is_open_stops_working(start_proxy):
    url = str((await start_proxy(_config())).make_url(""))
    _, doc = await gql(url, 'mutation { createKey(input: {name: "ws"}) { secret key { id } } }')
    kid, secret = doc["data"]["createKey"]["key"]["id"], doc["data"]["createKey"]["secret"]
    async with aiohttp.ClientSession() as s:
        ws = await ws_connect(s, url)
        c = WSClient(ws)
        assert (await c.init({"Authorization": f"Bearer {secret}"}))["type"] == "connection_ack"
        got, _ = await c.collect(await c.subscribe("query { me { id } }"))
        assert got[0]["data"]["me"]["id"] == kid
        _, doc = await gql(url, "mutation($id: ID!) { revokeKey(id: $id) { revoked } }", {"id": kid})
        assert doc["data"]["revokeKey"]["revoked"] is True
        got, _ = await c.collect(await c.subscribe("query { me { id } }"))
        assert codes(got[0]) == ["UNAUTHENTICATED"]
        got, _ = await c.collect(await c.subscribe(STREAM, {"input": chat_input()}))
        assert codes(got[-1]) == ["UNAUTHENTICATED"]
        await ws.close()


async def test_websocket_origins_follow_cors_origins(start_proxy):
    url = str((await start_proxy(_config(server={"cors_origins": ["https://app.example"]}))).make_url(""))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:     # a page elsewhere may not connect
            await ws_connect(s, url, headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        ws = await ws_connect(s, url, headers={"Origin": "https://app.example"})
        assert (await WSClient(ws).init(ADMIN))["type"] == "connection_ack"
        await ws.close()
