"""Acceptance: two proxy processes sharing Redis + PostgreSQL never overspend one budget together."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from tests.conftest import MASTER, require_service
from tests.cost_helpers import PER_CALL_NANOS, chat_body, request
from tests.keys_helpers import pg_url  # noqa: F401  (fixture)
from tests.test_shutdown import _free_port, _wait_up

REDIS = "redis://127.0.0.1:6379/0"


async def _redis_or_skip() -> None:
    r = aioredis.from_url(REDIS, socket_connect_timeout=1)
    try:
        await r.ping()
    except Exception as e:
        require_service("redis", f"{type(e).__name__}: {e}")
    finally:
        await r.aclose()


async def test_two_processes_share_one_budget_with_zero_overshoot(tmp_path, pg_url):  # noqa: F811
    await _redis_or_skip()
    prefix = f"test:{secrets.token_hex(4)}:"
    procs, urls = [], []
    try:
        for i in range(2):
            port = _free_port()
            cfg = tmp_path / f"c{i}.yaml"
            cfg.write_text(f"""
server: {{port: {port}, master_key: "{MASTER}", log_level: warning}}
storage: {{database: "{pg_url}", redis: "{REDIS}"}}
providers: {{local: {{type: mock, reply_tokens: 16}}}}
models: [{{name: mock, targets: [{{provider: local, model: mock}}], price: {{input: 0, output: 1}}}}]
budgets: {{redis_prefix: "{prefix}"}}
cache: {{enabled: false}}
""")
            procs.append(subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
            await _wait_up(urls[-1])
        st, b, _ = await request(urls[0], "POST", "/admin/budgets",
                                 {"id": "shared", "amount_usd": 50 * PER_CALL_NANOS / 1e9, "period": "total"})
        assert st == 200, b
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
            results = await asyncio.gather(*[request(urls[i % 2], "POST", "/v1/chat/completions",
                                                     chat_body("shared"), session=s) for i in range(200)])
        ok = [r for r in results if r[0] == 200]
        assert len(ok) == 50, sorted({r[0] for r in results})
        assert {r[0] for r in results} == {200, 429}
        assert {r[2]["x-llm-provider"] for r in ok} == {"local"}
        for url in urls:                                    # the batched writers: flushed on each read
            await request(url, "GET", "/v1/usage?limit=1")
        base, _, schema = pg_url.partition("?schema=")
        conn = await asyncpg.connect(base, server_settings={"search_path": schema})
        try:
            count, total = await conn.fetchrow("SELECT COUNT(*), SUM(cost_nanos) FROM usage_events")
        finally:
            await conn.close()
        assert count == 50 and total == 50 * PER_CALL_NANOS       # overshoot 0, every admitted call recorded
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        r = aioredis.from_url(REDIS)
        keys = [k async for k in r.scan_iter(prefix + "*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()
