"""Rate limits shared through the real Redis on 127.0.0.1:6379: one Lua call per check, two proxy
processes enforcing one limit together, and the failure policies when Redis is paused or absent."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from proxy.gateway import GATEWAY
from proxy.limits import Level
from proxy.limits.redis import RedisLimiter
from tests.conftest import MASTER, make_config, require_service

URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AUTH = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def prefix():
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    client = Redis.from_url(URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as e:
        await client.aclose()
        require_service("redis", f"{type(e).__name__}: {e}")
    p = f"llm:rl:test:{secrets.token_hex(6)}:"
    yield p
    for _ in range(50):                          # a CLIENT PAUSE from the test may still be running
        try:
            keys = [k async for k in client.scan_iter(match=p + "*", count=1000)]
            if keys:
                await client.delete(*keys)
            break
        except Exception:
            await asyncio.sleep(0.1)
    await client.aclose()


async def _post(server_url: str, body: dict, headers: dict | None = None, session=None):
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        async with s.post(server_url + "/v1/chat/completions", data=orjson.dumps(body),
                          headers={**AUTH, **(headers or {})}) as r:
            return r.status, r.headers.copy(), await r.read()
    finally:
        if own:
            await s.close()


async def test_lua_check_and_take_is_atomic_and_settles(prefix):
    lim = RedisLimiter(URL, prefix=prefix)
    try:
        wide = Level("global", "g", rpm=100, tpm=10_000)
        narrow = Level("key:k", "k:k", rpm=2, concurrency=5)
        t0 = time.monotonic()
        a = await lim.acquire([wide, narrow], 300, False, "a")
        assert a.allowed and a.states[1].remaining_requests == 1 and a.states[1].inflight == 1
        assert a.states[0].remaining_tokens == 9_700
        assert (await lim.acquire([wide, narrow], 300, False, "b")).allowed
        d = await lim.acquire([wide, narrow], 300, False, "c")
        assert not d.allowed and d.denied == narrow and d.reason == "requests"
        assert d.retry_after == pytest.approx(30.0, abs=0.1)
        peek = await lim.peek([wide, narrow])
        # Buckets refill continuously (10,000 a minute: one token every 6 ms): a loaded machine's pauses
        # between these calls add a few tokens back, never take any away.
        refilled = lambda: int((time.monotonic() - t0) * 10_000 / 60) + 1  # noqa: E731
        assert peek[0].remaining_requests == 98
        assert 9_400 <= peek[0].remaining_tokens <= 9_400 + refilled()     # c took nothing
        await lim.settle([wide, narrow], "a", 300, 50)          # refund 250, free a's slot
        peek = await lim.peek([wide, narrow])
        assert 9_650 <= peek[0].remaining_tokens <= 9_650 + refilled() and peek[1].inflight == 1
        big = await lim.acquire([wide], 10_001, True, "e")
        assert not big.allowed and big.reason == "too_large"
        reserved = Level("global", "g2", rpm=4, reserve=0.5)
        got = [(await lim.acquire([reserved], 0, False, str(i))).allowed for i in range(3)]
        assert got == [True, True, False]
        assert (await lim.acquire([reserved], 0, True, "h")).allowed
    finally:
        await lim.close()


async def test_one_round_trip_per_check(prefix):
    lim = RedisLimiter(URL, prefix=prefix)
    calls = []
    orig = lim.client.execute_command

    async def counting(*args, **kw):
        calls.append(args[0])
        return await orig(*args, **kw)
    lim.client.execute_command = counting     # type: ignore[method-assign]
    try:
        await lim.start()
        calls.clear()
        levels = [Level("global", "g", rpm=1000, tpm=100_000), Level("model:m", "m:m", rpm=500, concurrency=9),
                  Level("key:k", "k:k", tpm=50_000), Level("source:s", "s:s", rpm=100)]
        for i in range(5):
            assert (await lim.acquire(levels, 100, False, str(i))).allowed
        assert calls == ["EVALSHA"] * 5
    finally:
        await lim.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"proxy exited: {proc.stderr.read().decode()[-2000:]}")   # type: ignore[union-attr]
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("proxy did not start")


async def test_two_processes_share_one_limit(prefix, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"""
server: {{master_key: "{MASTER}", log_level: warning}}
storage: {{database: "sqlite:///{tmp_path}/ledger.db", redis: "{URL}"}}
providers: {{local: {{type: mock}}}}
models: [{{name: mock, targets: [{{provider: local, model: mock}}]}}]
limits: {{prefix: "{prefix}", redis_timeout: 2, global: {{rpm: 50}}}}
telemetry: {{logs: {{access_log: false}}}}
""")
    ports = [_free_port(), _free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg), "--port", str(p)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for p in ports]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for u, proc in zip(urls, procs, strict=True):
            await _wait_ready(u, proc)
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as s:
            body = {"model": "mock", "messages": MSG}
            results = await asyncio.gather(*(_post(u, body, session=s) for u in urls for _ in range(100)))
        statuses = [r[0] for r in results]
        assert statuses.count(200) == 50 and statuses.count(429) == 150
        per_proc = [sum(1 for r in results[i * 100:(i + 1) * 100] if r[0] == 200) for i in range(2)]
        assert sum(per_proc) == 50
        assert all(r[1]["x-ratelimit-limit-requests"] == "50" for r in results)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_paused_redis_follows_the_failure_policy(policy, prefix, start_proxy):
    server = await start_proxy(make_config(
        storage={"redis": URL},
        limits={"prefix": prefix, "redis_timeout": 0.05, "breaker_cooldown": 0.3,
                "global": {"rpm": 1000, "failure": policy}}))
    url = str(server.make_url("")).rstrip("/")
    body = {"model": "mock", "messages": MSG}
    assert (await _post(url, body))[0] == 200                      # Redis up: normal
    admin = Redis.from_url(URL)
    await admin.execute_command("CLIENT", "PAUSE", "1200", "ALL")   # Redis "stops" for 1.2 s
    try:
        statuses, slowest = [], 0.0
        for _ in range(8):
            t = time.monotonic()
            status, h, raw = await _post(url, body)
            slowest = max(slowest, time.monotonic() - t)
            statuses.append(status)
            await asyncio.sleep(0.05)
        assert slowest < 0.5                                       # never hangs on Redis
        if policy == "fail_open":
            assert statuses == [200] * 8
        else:
            assert statuses == [503] * 8
            assert orjson.loads(raw)["error"]["code"] == "service_unavailable" and "retry-after" in h
        assert server.app[GATEWAY].limits.limiter.stats[policy] == 8      # counted for metrics
    finally:
        await asyncio.sleep(1.3)
        await admin.aclose()
    # Breaker half-open after 0.3 s: one probe decides. A probe that a loaded machine slows past the 50 ms
    # timeout keeps it open one more cooldown, so allow a few cooldowns, not exactly one.
    statuses = []
    for _ in range(8):
        await asyncio.sleep(0.35)
        statuses.append((await _post(url, body))[0])
        if statuses[-1] == 200:
            break
    assert statuses[-1] == 200, statuses


@pytest.mark.parametrize("policy,expect", [("fail_open", 200), ("fail_closed", 503)])
async def test_closed_port(policy, expect, start_proxy):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                   # bound, never listening: connections are refused
        server = await start_proxy(make_config(
            storage={"redis": f"redis://127.0.0.1:{port}/0"},
            limits={"keys": {"failure": policy}, "master": {"rpm": 10, "failure": policy}}))
        url = str(server.make_url("")).rstrip("/")
        t = time.monotonic()
        statuses = [(await _post(url, {"model": "mock", "messages": MSG}))[0] for _ in range(5)]
        assert time.monotonic() - t < 2.0
        assert statuses == [expect] * 5
        stats = server.app[GATEWAY].limits.limiter.stats
        assert stats[policy] == 5
