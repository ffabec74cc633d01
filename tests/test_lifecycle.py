"""Every call ends exactly once: the lifecycle matrix.

{JSON, SSE} x {completed, upstream 5xx before the first byte, upstream cut after 3 chunks, client gone
before the first byte, client gone mid-stream, client gone right after the last byte, drain deadline}.
After each: one usage event for the request id, the key's concurrency slot free, the budget's reservation
0, the in-flight gauges 0, one access-log line. The gateway runs as `serve` runs it (handler cancellation
on), and the hang-ups use raw sockets that close at once, as curl does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy.app import build_app
from proxy.cli import drain_calls
from proxy.gateway import GATEWAY
from tests.conftest import make_config, openai_provider
from tests.cost_helpers import request

MSG = [{"role": "user", "content": "tell me something"}]
ENDINGS = ["completed", "upstream_5xx", "upstream_cut", "gone_before_first_byte", "gone_mid_stream",
           "gone_after_last_byte", "drain"]


class Gateway:
    """One gateway, served like `llm-service serve` serves it, in front of the fake upstream."""

    def __init__(self, app: web.Application, runner: web.AppRunner, url: str, port: int) -> None:
        self.app, self.runner, self.url, self.port = app, runner, url, port
        self.gw = app[GATEWAY]
        self.key = ""


@pytest.fixture
async def gateway(fake_openai, tmp_path):
    cfg = make_config(
        providers={"up": openai_provider(fake_openai, timeouts={"first_byte": 5, "idle": 5, "total": 30})},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}],
                 "price": {"input": 1.0, "output": 2.0}}],
        storage={"database": f"sqlite:///{tmp_path}/ledger.db"},
        accounting={"writer": "inline", "flush_interval": 0.05},
        routing={"retries": 0, "drain_seconds": 0.2, "breaker": {"failures": 1_000_000}})
    app = build_app(cfg)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    g = Gateway(app, runner, f"http://127.0.0.1:{port}", port)
    st, b, _ = await request(g.url, "POST", "/admin/budgets", {"id": "b", "amount_usd": 100, "period": "total"})
    assert st == 200, b
    st, k, _ = await request(g.url, "POST", "/admin/keys", {"name": "one", "max_concurrency": 1, "budget_id": "b"})
    assert st == 200, k
    g.key = k["key"]
    yield g
    await runner.cleanup()


def raw_request(g: Gateway, rid: str, stream: bool) -> bytes:
    body = orjson.dumps({"model": "gpt", "messages": MSG, "stream": stream})
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{g.port}\r\n"
            f"Authorization: Bearer {g.key}\r\nx-request-id: {rid}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def raw_call(g: Gateway, rid: str, stream: bool, until: bytes | None = None,
                   hang_up_after: float | None = None) -> bytes:
    """A curl-like client: reads until `until` appears (or EOF), or hangs up after `hang_up_after` s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(raw_request(g, rid, stream))
    await writer.drain()
    got = b""
    try:
        if hang_up_after is not None:
            await asyncio.sleep(hang_up_after)
        else:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                got += data
                if until is not None and until in got:
                    break
    finally:
        writer.transport.abort()            # close at once, no FIN handshake courtesy
    return got


async def settled(g: Gateway, rid: str) -> list[dict[str, Any]]:
    """Wait for the call's end to settle and its usage event to reach the ledger; return its events."""
    for _ in range(200):
        await asyncio.sleep(0.02)
        if any(c.request_id == rid for c in g.gw.open):
            continue
        await g.gw.settled()
        await g.gw.accounting.writer.flush()
        st, body, _ = await request(g.url, "GET", f"/v1/usage?request_id={rid}")
        assert st == 200, body
        if body["data"]:
            return body["data"]
    raise AssertionError(f"no usage event for {rid}")


async def assert_freed(g: Gateway) -> None:
    st, q, _ = await request(g.url, "GET", "/v1/quota", headers={"Authorization": f"Bearer {g.key}"})
    assert st == 200
    key_level = next(lv for lv in q["limits"] if lv["level"] == "key")
    assert key_level["inflight"] == 0, q
    st, b, _ = await request(g.url, "GET", "/admin/budgets/b")
    assert b["reserved_usd"] == 0, b
    m = g.gw.telemetry.metrics
    assert m.inflight.values[()] == 0 and m.streams.values[()] == 0
    assert g.gw.inflight == 0 and not g.gw.open


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("ending", ENDINGS)
async def test_every_ending_leaves_one_event_and_frees_everything(gateway, fake_openai, caplog, ending, stream):
    g = gateway
    rid = f"req_{ending}_{'sse' if stream else 'json'}"
    caplog.set_level(logging.INFO, logger="proxy.access")
    expect_status = {"completed": 200, "upstream_5xx": 502, "upstream_cut": 502, "drain": 503,
                     "gone_before_first_byte": 499, "gone_mid_stream": 499, "gone_after_last_byte": 200}[ending]
    if ending == "upstream_5xx":
        fake_openai.mode = "error500"
        got = await raw_call(g, rid, stream)
        assert b" 502 " in got.split(b"\r\n", 1)[0]
    elif ending == "upstream_cut":
        fake_openai.mode = "reset_midstream" if stream else "reset"
        fake_openai.spaced = True              # `"content": "tok"`: the estimate must still count it
        got = await raw_call(g, rid, stream)
        if stream:
            assert b"event: error" in got and b"Hello" in got
    elif ending == "completed":
        got = await raw_call(g, rid, stream)
        assert (b"[DONE]" in got) if stream else (b'"chat.completion"' in got)
    elif ending == "gone_after_last_byte":
        got = await raw_call(g, rid, stream, until=b"[DONE]\n\n" if stream else b'"fp_fake"}')
    elif ending == "gone_before_first_byte":
        fake_openai.mode, fake_openai.delay = "slow_first_byte", 2.0
        await raw_call(g, rid, stream, hang_up_after=0.2)
    elif ending == "gone_mid_stream":
        if stream:
            fake_openai.delay = 0.2
            got = await raw_call(g, rid, stream, until=b"Hello")
            assert b"Hello" in got
        else:                              # a JSON answer has no middle: the client leaves while it waits
            fake_openai.mode, fake_openai.delay = "slow_first_byte", 2.0
            await raw_call(g, rid, stream, hang_up_after=0.3)
    elif ending == "drain":
        if stream:
            fake_openai.delay = 0.3
        else:
            fake_openai.mode, fake_openai.delay = "slow_first_byte", 3.0
        client = asyncio.create_task(raw_call(g, rid, stream))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if any(c.request_id == rid for c in g.gw.open) and (not stream or fake_openai.requests):
                break
        await asyncio.sleep(0.3)
        g.gw.accepting = False
        await drain_calls(g.gw, 0.05)
        got = await asyncio.wait_for(client, 5)
        if stream:
            assert b"event: error" in got and b"gateway_shutting_down" in got, got
        else:
            assert b" 503 " in got.split(b"\r\n", 1)[0] and b"gateway_shutting_down" in got, got
    events = await settled(g, rid)
    assert len(events) == 1, events
    ev = events[0]
    assert ev["status"] == expect_status, (ev, ending)
    if ending in ("upstream_cut", "gone_mid_stream", "drain") and stream:
        assert ev["tokens"]["completion"] > 0 and ev["estimated"], ev    # from what was relayed, never 0
    await assert_freed(g)
    lines = [r for r in caplog.records if r.name == "proxy.access"
             and getattr(r, "fields", {}).get("request_id") == rid]
    assert len(lines) == 1, [getattr(r, "fields", None) for r in caplog.records]
    assert lines[0].fields["status"] == expect_status


async def test_churn_leaves_the_gauges_at_zero_and_one_event_per_call(gateway, fake_openai):
    """2,000 mixed calls at concurrency 16: completions, streams, upstream 500/400/resets, cut streams,
    and raw-socket clients that hang up at a random moment. Afterwards nothing is held and every call
    that reached a provider left exactly one usage event."""
    import random

    import aiohttp

    g = gateway
    _st, k, _ = await request(g.url, "POST", "/admin/keys", {"name": "churn", "max_concurrency": 64, "budget_id": "b"})
    g.key = k["key"]
    fake_openai.mode = "by_prompt"
    ended: list[str] = []
    g.gw.observers.append(lambda call: ended.append(call.request_id) if call.attempts else None)
    rng = random.Random(16)
    modes = ["ok", "ok", "ok", "error500", "error400", "reset", "reset_midstream"]
    headers = {"Authorization": f"Bearer {g.key}"}
    sem = asyncio.Semaphore(16)

    async def one(i: int, s: aiohttp.ClientSession) -> None:
        mode, stream = rng.choice(modes), rng.random() < 0.5
        body = {"model": "gpt", "messages": [{"role": "user", "content": mode}], "stream": stream}
        async with sem:
            if rng.random() < 0.2:                      # a curl that hangs up at a random moment
                _reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
                raw = orjson.dumps(body)
                writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {g.key}"
                              f"\r\nContent-Length: {len(raw)}\r\n\r\n").encode() + raw)
                await asyncio.sleep(rng.random() * 0.004)
                writer.transport.abort()
                return
            try:
                async with s.post(g.url + "/v1/chat/completions", json=body, headers=headers) as r:
                    await r.read()
            except aiohttp.ClientError:         # a cut stream, or a pooled connection the server closed
                pass

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as s:
        await asyncio.gather(*(one(i, s) for i in range(2000)))
    for _ in range(200):
        if not g.gw.open:
            break
        await asyncio.sleep(0.02)
    await g.gw.settled()
    await g.gw.accounting.writer.flush()
    await assert_freed(g)
    assert len(ended) == len(set(ended)) > 1000
    rows = await g.gw.keys.ledger.fetch("SELECT request_id, COUNT(*) AS n FROM usage_events GROUP BY request_id")
    per_id = {r[0]: r[1] for r in rows}
    assert set(per_id.values()) == {1} and set(per_id) == set(ended)


async def test_a_reader_that_stops_reading_is_cut_off_and_its_call_ended(fake_openai, tmp_path, caplog):
    """A client that stops reading (a tiny receive buffer, never read) holds nothing for ever: past
    `server.write_timeout` the connection is aborted, the call ends as `write_stall`, its usage is
    recorded and its slot and reservation are freed."""
    import socket

    cfg = make_config(
        providers={"up": openai_provider(fake_openai)},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}],
                 "price": {"input": 1.0, "output": 2.0}}],
        server={"write_timeout": 0.3},
        storage={"database": f"sqlite:///{tmp_path}/ledger.db"}, accounting={"writer": "inline"})
    app = build_app(cfg)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    g = Gateway(app, runner, f"http://127.0.0.1:{port}", port)
    try:
        st, b, _ = await request(g.url, "POST", "/admin/budgets", {"id": "b", "amount_usd": 100, "period": "total"})
        assert st == 200, b
        _, k, _ = await request(g.url, "POST", "/admin/keys", {"name": "s", "max_concurrency": 1, "budget_id": "b"})
        g.key = k["key"]
        fake_openai.reply = " ".join(["x" * 1000] * 20_000)      # ~20 MB of stream: more than any buffer
        caplog.set_level(logging.INFO, logger="proxy.access")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        await asyncio.get_running_loop().sock_sendall(sock, raw_request(g, "req_stalled", True))
        try:
            events = await settled(g, "req_stalled")                 # never reads a byte
        finally:
            sock.close()
        assert len(events) == 1 and events[0]["status"] == 499
        await assert_freed(g)
        line = next(r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "req_stalled")
        assert line.fields["ended_by"] == "write_stall"
    finally:
        await runner.cleanup()
