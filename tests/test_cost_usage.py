"""Usage events: stream usage equals the upstream's, abandoned streams are recorded, cache hits are free,
CSV and summaries, and SIGTERM loses no event."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time

import aiohttp
import openai

from tests.conftest import MASTER, make_config, openai_provider
from tests.cost_helpers import ADMIN, chat_body, priced_config, request
from tests.test_shutdown import _free_port, _wait_up


def _gpt_config(fake, tmp_path):
    return make_config(
        providers={"up": openai_provider(fake, timeouts={"first_byte": 2, "idle": 2, "total": 10})},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]}],
        storage={"database": f"sqlite:///{tmp_path}/l.db"})


async def _events(url: str, query: str = "") -> list[dict]:
    st, body, _ = await request(url, "GET", "/v1/usage" + query)
    assert st == 200, body
    return body["data"]


async def test_streamed_tokens_equal_the_upstream_usage_chunk(start_proxy, fake_openai, tmp_path):
    fake_openai.reply = "one two three four five six seven"
    server = await start_proxy(_gpt_config(fake_openai, tmp_path))
    url = str(server.make_url(""))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=MASTER)
    stream = await client.chat.completions.create(model="gpt", stream=True,
                                                  messages=[{"role": "user", "content": "hi"}])
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)             # the client did not ask: usage chunk stripped
    assert fake_openai.requests[-1]["stream_options"] == {"include_usage": True}   # but we asked upstream
    await client.close()
    [ev] = await _events(url)
    assert ev["tokens"] == {"prompt": 11, "completion": 7, "cached": 0} and ev["estimated"] is False
    # gpt-4o-mini from the shipped table: 11 x $0.15/M + 7 x $0.60/M
    assert round(ev["cost"] * 1e9) == 11 * 150 + 7 * 600
    assert ev["stream"] is True and ev["status"] == 200 and ev["time_to_first_token_ms"] is not None


async def test_abandoned_stream_is_recorded_as_estimated(start_proxy, fake_openai, tmp_path):
    fake_openai.reply = " ".join(f"word{i}" for i in range(40))
    fake_openai.delay = 0.03
    server = await start_proxy(_gpt_config(fake_openai, tmp_path))
    url = str(server.make_url(""))
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", headers=ADMIN,
                          json={"model": "gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
            got = b""
            while got.count(b"data:") < 10:
                got += await r.content.readany()
        # leaving the block closes the connection halfway
    ev = None
    for _ in range(60):
        evs = await _events(url)
        if evs:
            ev = evs[0]
            break
        await asyncio.sleep(0.05)
    assert ev is not None, "the abandoned stream was not recorded"
    assert ev["estimated"] is True and ev["status"] == 499
    assert 5 <= ev["tokens"]["completion"] < 40 * 3
    assert ev["tokens"]["prompt"] > 0 and ev["cost"] > 0


async def test_cache_hit_costs_nothing_and_records_the_saving(start_proxy, tmp_path):
    server = await start_proxy(priced_config(f"sqlite:///{tmp_path}/l.db"))
    url = str(server.make_url(""))
    body = chat_body(cache=True)
    st1, _, h1 = await request(url, "POST", "/v1/chat/completions", body)
    st2, _, h2 = await request(url, "POST", "/v1/chat/completions", body)
    assert st1 == st2 == 200 and h2["x-llm-cache"] == "HIT"
    assert h1["x-llm-cost"] == "0.000016" and h2["x-llm-cost"] == "0"
    assert h2["x-llm-completion-tokens"] == "16"
    hit, miss = await _events(url)
    assert hit["metadata"]["cached"] is True and hit["cost"] == 0 and round(hit["saved_cost"] * 1e9) == 16_000
    assert miss["metadata"]["cached"] is False and round(miss["cost"] * 1e9) == 16_000
    _, summary, _ = await request(url, "GET", "/v1/usage/summary?group_by=model")
    assert summary["data"][0]["cache_hits"] == 1 and summary["data"][0]["requests"] == 2
    # filters, pagination, CSV
    page = await _events(url, "?limit=1")
    assert len(page) == 1 and page[0]["id"] == hit["id"]
    rest = await _events(url, f"?after={hit['id']}")
    assert [e["id"] for e in rest] == [miss["id"]]
    one = await _events(url, f"?request_id={miss['request_id']}")
    assert [e["id"] for e in one] == [miss["id"]]
    _, csv_body, headers = await request(url, "GET", "/v1/usage?format=csv")
    lines = csv_body.decode().strip().splitlines()
    assert headers["Content-Type"].startswith("text/csv") and len(lines) == 3 and lines[0].startswith("id,request_id")


async def test_unpriced_model_is_recorded_as_unpriced_not_free(start_proxy, tmp_path):
    server = await start_proxy(make_config(storage={"database": f"sqlite:///{tmp_path}/l.db"}))
    url = str(server.make_url(""))
    st, _, headers = await request(url, "POST", "/v1/chat/completions", chat_body())
    assert st == 200 and "x-llm-cost" not in headers and headers["x-llm-prompt-tokens"]
    [ev] = await _events(url)
    assert ev["cost"] is None and ev["priced"] is False
    st, summary, _ = await request(url, "GET", "/v1/usage/summary?group_by=day")
    assert summary["data"][0]["unpriced_requests"] == 1


async def test_sigterm_loses_no_usage_event(tmp_path):
    port = _free_port()
    db = tmp_path / "ledger.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
server: {{port: {port}, master_key: "{MASTER}", log_level: warning}}
storage: {{database: "sqlite:///{db}"}}
providers: {{local: {{type: mock, reply_tokens: 8}}}}
models: [{{name: mock, targets: [{{provider: local, model: mock}}], price: {{input: 1, output: 1}}}}]
accounting: {{flush_interval: 30, batch_size: 100000}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    n = 40
    try:
        await _wait_up(url)
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*[request(url, "POST", "/v1/chat/completions",
                                                     chat_body(stream=i % 2 == 0), session=s) for i in range(n)])
        assert all(r[0] == 200 for r in results)
        proc.send_signal(signal.SIGTERM)          # the writer flushes every 30 s: only shutdown can save them
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT request_id), SUM(cost_nanos) FROM usage_events").fetchone()
    assert rows[0] == n and rows[1] == n and rows[2] > 0


def test_the_usage_event_gets_every_field_from_its_own_source():
    """_event builds the row positionally (cheap); each field must still land in its own column."""
    from proxy.config import Target
    from proxy.context import ChatCall, Usage
    from proxy.pipeline.auth import Principal
    from proxy.pipeline.cost import Recorder

    call = ChatCall(body={"model": "m", "options": {"batch_id": "batch-1", "async": True},
                          "metadata": {"budget_id": "b-body"}}, model="alias", stream=True, endpoint="embeddings")
    call.key = Principal(id="key_1", source_id="src-9", source_type="service", metadata={"team": "blue"})
    call.target = Target(provider="prov", model="up-model")
    call.cache, call.budget_id = "hit", "b-1"
    call.first_byte_at = call.started + 0.25
    u = Usage(prompt_tokens=11, completion_tokens=7, cached_tokens=3, estimated=True)
    e = Recorder.__new__(Recorder)._event(call, u, 1234, 567, 0, "boom")
    assert (e.request_id, e.day, e.source_type, e.source_id, e.team) == (call.request_id, e.day, "service", "src-9", "blue")
    assert len(e.day) == 10 and abs(e.ts - time.time()) < 5
    assert (e.request_type, e.model, e.provider, e.upstream_model, e.key_id, e.budget_id) == (
        "embeddings", "alias", "prov", "up-model", "key_1", "b-1")
    assert (e.prompt_tokens, e.completion_tokens, e.cached_tokens, e.cost_nanos, e.saved_nanos) == (11, 7, 3, 1234, 567)
    assert (e.is_async, e.cached, e.batch_id, e.stream, e.status, e.error) == (True, True, "batch-1", True, 500, "boom")
    assert e.latency_ms >= 0 and e.ttft_ms == 250.0 and e.estimated is True and e.id is None
