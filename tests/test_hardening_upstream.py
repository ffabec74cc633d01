"""Upstream faults the gateway must contain: oversized bodies and stream lines, a failing upstream's
retries (the retry budget), and a full connection pool (ours to report, not the provider's fault)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.gateway import GATEWAY
from tests.conftest import MASTER, make_config
from tests.fakes.hostile_upstream import HostileUpstream
from tests.test_shutdown import _free_port, _wait_up

AUTH = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hi"}]
MiB = 1024 * 1024


@pytest.fixture
async def hostile(aiohttp_server) -> HostileUpstream:
    fake = HostileUpstream()
    fake.server = await aiohttp_server(fake.app)
    return fake


def _config(hostile: HostileUpstream, **sections):
    provider = {"type": "openai", "base_url": str(hostile.server.make_url("/v1")), "api_key": "sk-up-000000",
                **sections.pop("provider", {})}
    return make_config(providers={"up": provider}, models=[{"name": "m", "targets": [{"provider": "up", "model": "m"}]}],
                       **sections)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_a_100_mb_upstream_body_is_502_not_retried_and_never_buffered(hostile, tmp_path):
    port = _free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
server: {{port: {port}, master_key: "{MASTER}", log_level: warning}}
storage: {{database: "sqlite:///{tmp_path}/ledger.db"}}
providers: {{up: {{type: openai, base_url: "{hostile.server.make_url('/v1')}", api_key: sk-up-000000}}}}
models: [{{name: m, targets: [{{provider: up, model: m}}]}}]
routing: {{retries: 2}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_up(url)
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/chat/completions", json={"model": "m", "messages": MSG}, headers=AUTH) as r:
                assert r.status == 200                  # warm: pools, imports, first-request allocations
        before = _peak_rss_kib(proc.pid)
        hostile.mode, hostile.size = "big", 100 * MiB
        for with_length in (True, False):               # refused from Content-Length, or once past 32 MiB
            hostile.with_length, hostile.attempts, hostile.sent = with_length, 0, 0
            async with aiohttp.ClientSession() as s:
                async with s.post(url + "/v1/chat/completions", json={"model": "m", "messages": MSG},
                                  headers=AUTH) as r:
                    err = (await r.json())["error"]
            assert r.status == 502 and err["code"] == "upstream_response_too_large", err
            assert hostile.attempts == 1                # not retried, not sent elsewhere
            await asyncio.sleep(0.1)
            assert hostile.sent < 100 * MiB - 1         # the gateway closed the connection instead of reading
        grown = (_peak_rss_kib(proc.pid) - before) / 1024
        assert grown < 80, f"peak RSS grew {grown:.0f} MiB (the whole body read whole would be 100+)"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_stream_line_over_the_cap_ends_the_stream_with_the_error(start_proxy, hostile):
    server = await start_proxy(_config(hostile, server={"max_upstream_response_bytes": MiB}))
    hostile.mode, hostile.size = "big_line", 40 * MiB
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/v1/chat/completions"), headers=AUTH,
                          json={"model": "m", "messages": MSG, "stream": True}) as r:
            body = await r.read()
    assert r.status == 200 and b"event: error" in body and b"upstream_response_too_large" in body
    assert len(body) < MiB
    await asyncio.sleep(0.1)
    assert hostile.sent < 40 * MiB - 6 and hostile.attempts == 1      # cut off, not read to its end


async def _storm(server, n: int) -> list[int]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one() -> int:
            async with s.post(server.make_url("/v1/chat/completions"), headers=AUTH,
                              json={"model": "m", "messages": MSG}) as r:
                await r.read()
                return r.status
        return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.parametrize("budget,most", [({"ratio": 0.2, "min_retries": 3}, 60 + 13),
                                         ({"ratio": 1.0, "min_retries": 1000}, 120)])
async def test_retries_to_a_failing_upstream_stay_within_the_retry_budget(start_proxy, hostile, budget, most):
    cfg = _config(hostile, routing={"retries": 1, "backoff_base": 0.01, "breaker": {"failures": 10_000},
                                    "retry_budget": budget})
    server = await start_proxy(cfg)
    hostile.mode, hostile.delay = "always503", 0.1
    statuses = await _storm(server, 60)
    assert statuses == [503] * 60                       # each call gets the error it had
    if most < 120:
        assert 60 + 3 <= hostile.attempts <= most, hostile.attempts    # 20% of 60 in flight: ~12 retries
    else:
        assert hostile.attempts == most                 # an unbounded budget: every call retried


async def test_waiting_for_a_full_pool_is_503_server_overloaded_and_not_the_targets_fault(start_proxy, hostile):
    cfg = _config(hostile, provider={"max_connections": 8, "timeouts": {"pool": 0.1}},
                  routing={"breaker": {"failures": 3}})
    server = await start_proxy(cfg)
    hostile.delay = 0.4
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one() -> tuple[int, str | None, str | None]:
            async with s.post(server.make_url("/v1/chat/completions"), headers=AUTH,
                              json={"model": "m", "messages": MSG}) as r:
                body = orjson.loads(await r.read())
                return r.status, (body.get("error") or {}).get("code"), r.headers.get("Retry-After")
        got = await asyncio.gather(*(one() for _ in range(60)))
    assert sorted(st for st, _, _ in got).count(200) == 8 and hostile.most_open == 8
    refused = [g for g in got if g[0] != 200]
    assert len(refused) == 52 and all(g[:2] == (503, "server_overloaded") and g[2] for g in refused)
    router = server.app[GATEWAY].router
    st = router.health.of(router.models.resolve("m").targets[0])
    assert st.failures == 0 and st.errors == 0 and st.open_until == 0.0 and st.inflight == 0
    hostile.delay = 0.0
    statuses = await _storm(server, 20)                 # the pool's places all came back
    assert statuses == [200] * 20
