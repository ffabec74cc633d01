"""Batches survive a SIGKILL (no line settled or billed twice after the restart) and two gateways on one
PostgreSQL ledger share a batch without running a line twice (FOR UPDATE SKIP LOCKED leases)."""

from __future__ import annotations

import asyncio
import io
import signal
import sqlite3
import subprocess
import sys
from collections import Counter

import openai
import orjson

from proxy.api.jobs import RUNNER
from tests.conftest import make_config, openai_provider
from tests.keys_helpers import pg_url  # noqa: F401 - fixture
from tests.test_batches import _lines, _until_done
from tests.test_shutdown import _free_port, _wait_up

MASTER = "sk-batch-durable-test"


def _serve(cfg_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_sigterm_then_sigkill_mid_batch_each_line_settled_and_billed_once(tmp_path):
    port = _free_port()
    db = tmp_path / "ledger.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
server: {{port: {port}, master_key: "{MASTER}", log_level: warning}}
storage: {{database: "sqlite:///{db}"}}
providers: {{local: {{type: mock, first_token_delay_ms: 15}}}}
models: [{{name: mock, targets: [{{provider: local, model: mock}}]}}]
jobs: {{concurrency: 8, batch_share: 1.0, lease_seconds: 0.5, poll_interval: 0.02}}
batches: {{progress_interval: 0.05}}
""")
    url = f"http://127.0.0.1:{port}"
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=MASTER, max_retries=0)
    proc = _serve(cfg)
    try:
        await _wait_up(url)
        f = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(100))), purpose="batch")
        b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        await _until_completed(client, b.id, 10)
        proc.send_signal(signal.SIGTERM)                # drain: lines in flight finish, nothing new is taken
        assert proc.wait(20) == 0
        with sqlite3.connect(db) as conn:
            states = dict(conn.execute("SELECT state, COUNT(*) FROM batch_lines GROUP BY state").fetchall())
        assert "leased" not in states and states["done"] >= 10, states     # every lease settled or released
        proc = _serve(cfg)
        await _wait_up(url)
        await _until_completed(client, b.id, states["done"] + 10)
        proc.send_signal(signal.SIGKILL)                # mid-batch: lines in flight, leases held
        proc.wait(10)
        proc = _serve(cfg)
        await _wait_up(url)
        done = await _until_done(client, b.id)
        output = (await client.files.content(done.output_file_id)).content.decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        await client.close()
    assert done.status == "completed" and done.request_counts.completed == 100
    rows = [orjson.loads(x) for x in output.splitlines()]
    per_custom = Counter(r["custom_id"] for r in rows)
    assert len(per_custom) == 100 and set(per_custom.values()) == {1}
    with sqlite3.connect(db) as conn:
        events = conn.execute("SELECT custom_id, request_id FROM usage_events WHERE batch_id = ?", (b.id,)).fetchall()
    # every line billed exactly once: one event per custom_id, the one its output line names
    per_line = Counter(cid for cid, _ in events)
    assert len(per_line) == 100 and set(per_line.values()) == {1}
    assert dict(events) == {r["custom_id"]: r["response"]["request_id"] for r in rows}


async def _until_completed(client: openai.AsyncOpenAI, batch_id: str, n: int) -> None:
    for _ in range(500):
        cur = await client.batches.retrieve(batch_id)
        if cur.request_counts.completed >= n:
            break
        await asyncio.sleep(0.01)
    assert cur.status == "in_progress" and n <= cur.request_counts.completed < cur.request_counts.total


async def test_two_gateways_on_postgresql_share_a_batch(start_proxy, fake_openai, pg_url):  # noqa: F811
    cfg = make_config(storage={"database": pg_url}, providers={"up": openai_provider(fake_openai)},
                      models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]}],
                      jobs={"poll_interval": 0.02, "concurrency": 4, "batch_share": 1.0},
                      batches={"progress_interval": 0.05})
    fake_openai.delay = 0.01
    a, b = await start_proxy(cfg), await start_proxy(cfg)
    client = openai.AsyncOpenAI(base_url=str(a.make_url("/v1")), api_key=make_config().server.master_key,
                                max_retries=0)
    f = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(40, "gpt"))), purpose="batch")
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await _until_done(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 40
    prompts = Counter(r["messages"][0]["content"] for r in fake_openai.requests)
    assert len(prompts) == 40 and set(prompts.values()) == {1}      # no line ran twice
    ran = [a.app[RUNNER].lines_run, b.app[RUNNER].lines_run]
    assert sum(ran) == 40 and min(ran) > 0                            # both gateways took lines
    await client.close()
