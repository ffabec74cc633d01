"""WebSocket mode on GET /v1/responses with the official SDK's `responses.connect()`: turns on one socket,
previous_response_id across them, one response in flight, errors as events, idle timeout, and a client
that leaves mid-answer (the upstream is cancelled; the call ends once)."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import MASTER
from tests.ingress_helpers import ingress_config, usage_events
from tests.keys_helpers import create_key


def _client(server, key: str = MASTER) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0)


async def _until_terminal(conn) -> list:
    events = []
    async for ev in conn:
        events.append(ev)
        if ev.type in ("response.completed", "response.incomplete", "response.failed", "error"):
            return events
    return events


@pytest.fixture
async def proxy(start_proxy, fake_openai, fake_anthropic, tmp_path):
    return await start_proxy(ingress_config(fake_openai, fake_anthropic, tmp_path, mock_delay_ms=20,
                                            responses={"websocket_idle": 0.5}))


async def test_two_turns_on_one_socket_with_previous_response_id(proxy, fake_openai):
    async with _client(proxy).responses.connect() as conn:
        await conn.send({"type": "response.create", "model": "gpt", "input": "My name is Ada."})
        first = await _until_terminal(conn)
        assert first[0].type == "response.created" and first[-1].type == "response.completed"
        text = "".join(e.delta for e in first if e.type == "response.output_text.delta")
        assert text == fake_openai.reply
        rid = first[-1].response.id
        await conn.send({"type": "response.create", "model": "gpt", "input": "Name?", "previous_response_id": rid})
        second = await _until_terminal(conn)
        assert second[-1].type == "response.completed" and second[-1].response.previous_response_id == rid
        # pass-through on the same socket: the upstream's own events, relayed
        await conn.send({"type": "response.create", "model": "gpt-r", "input": "hi"})
        third = await _until_terminal(conn)
        assert third[-1].type == "response.completed" and third[-1].response.id == "resp_upstream1"
    chat = fake_openai.requests[1]["messages"]
    assert [m["role"] for m in chat] == ["user", "assistant", "user"] and chat[0]["content"] == "My name is Ada."
    evs = await usage_events(proxy, 3)
    assert [e["request_type"] for e in evs] == ["responses"] * 3


async def test_one_response_in_flight_and_errors_as_events(proxy):
    only_mock = (await create_key(proxy, models=["mock"]))["key"]
    async with _client(proxy, only_mock).responses.connect() as conn:
        await conn.send({"type": "response.create", "model": "mock", "input": "x"})
        await conn.send({"type": "response.create", "model": "mock", "input": "y"})
        events = []
        while not events or events[-1].type != "response.completed":
            events.append(await conn.recv())
        [busy] = [e for e in events if e.type == "error"]
        assert busy.error.code == "response_in_progress" and busy.status == 400
        await conn.send({"type": "response.create", "model": "gpt", "input": "x"})
        [refused] = await _until_terminal(conn)
        assert refused.type == "error" and refused.status == 403 and refused.error.type == "permission_error"
        await conn.send({"type": "response.create", "model": "mock", "input": "x",
                         "previous_response_id": "resp_nope"})
        [unknown] = await _until_terminal(conn)
        assert unknown.error.code == "previous_response_not_found" and unknown.status == 400
        await conn.send({"type": "response.create", "model": "mock", "input": "again"})
        assert (await _until_terminal(conn))[-1].type == "response.completed"     # the socket still serves


async def test_handshake_auth_and_idle_timeout(proxy):
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(proxy.make_url("/v1/responses"), headers={"Authorization": "Bearer sk-wrong"})
        assert e.value.status == 401
        ws = await s.ws_connect(proxy.make_url("/v1/responses"), headers={"Authorization": f"Bearer {MASTER}"})
        await ws.send_str("not json")
        bad = orjson.loads((await ws.receive()).data)
        assert bad["type"] == "error" and bad["error"]["code"] == "invalid_event"
        msg = await ws.receive(timeout=3)                        # nothing more sent: closed after 0.5 s
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
        async with s.get(proxy.make_url("/v1/responses"), headers={"Authorization": f"Bearer {MASTER}"}) as r:
            assert r.status == 405


async def test_a_client_that_leaves_mid_answer_cancels_the_upstream_and_ends_once(start_proxy, fake_openai,
                                                                                   fake_anthropic, tmp_path):
    proxy = await start_proxy(ingress_config(fake_openai, fake_anthropic, tmp_path,
                                             limits={"models": {"gpt": {"max_concurrency": 1}}}))
    fake_openai.reply = " ".join(f"w{i}" for i in range(60))
    fake_openai.delay = 0.02
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(proxy.make_url("/v1/responses"), headers={"Authorization": f"Bearer {MASTER}"})
        await ws.send_str(orjson.dumps({"type": "response.create", "model": "gpt", "input": "x"}).decode())
        while "output_text.delta" not in (await ws.receive()).data:
            pass
        await ws.close()
    [ev] = await usage_events(proxy)
    assert ev["request_type"] == "responses" and ev["status"] == 499
    for _ in range(40):
        if fake_openai.cancelled:
            break
        await asyncio.sleep(0.05)
    assert fake_openai.cancelled == 1
    fake_openai.delay = 0
    res = await _client(proxy).responses.create(model="gpt", input="x")      # the slot is free again
    assert res.status == "completed"


async def test_the_drain_deadline_ends_a_turn_with_an_error_event(proxy):
    from proxy.cli import drain_calls
    from proxy.gateway import GATEWAY
    gw = proxy.app[GATEWAY]
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(proxy.make_url("/v1/responses"), headers={"Authorization": f"Bearer {MASTER}"})
        await ws.send_str(orjson.dumps({"type": "response.create", "model": "mock", "input": "x"}).decode())
        while "output_text.delta" not in (await ws.receive()).data:
            pass
        gw.accepting = False
        await drain_calls(gw, 0.0)
        last = None
        while last is None or last.get("type") != "error":
            last = orjson.loads((await ws.receive(timeout=3)).data)
        assert last["error"]["code"] == "gateway_shutting_down" and last["status"] == 503
        await ws.close()
    [ev] = await usage_events(proxy)
    assert ev["request_type"] == "responses" and ev["status"] == 503
