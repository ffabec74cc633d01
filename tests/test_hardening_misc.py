"""Auth failures throttled per address (and audited), Redis half-open with one probe, and an exporter
shutdown bounded by the export timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy.api.auth_throttle import AuthThrottle
from proxy.app import build_app, build_gateway
from proxy.gateway import GATEWAY
from proxy.kv import KVError
from proxy.kv.redis import RedisKV
from tests.conftest import MASTER, make_config
from tests.keys_helpers import call, create_key

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def blackhole() -> AsyncIterator[int]:
    """A TCP server that accepts and reads but never answers: a Redis or a collector that hangs."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in writers:
        w.close()
    server.close()


async def test_bad_keys_past_the_limit_get_429_audited_and_a_good_key_still_works(start_proxy, tmp_path):
    server = await start_proxy(make_config(storage={"database": f"sqlite:///{tmp_path}/l.db"}))
    good = (await create_key(server, name="good"))["key"]
    body = {"model": "mock", "messages": MSG}
    statuses, retry_after = [], None
    async with aiohttp.ClientSession() as s:
        for i in range(30):
            async with s.post(server.make_url("/v1/chat/completions"), json=body,
                              headers={"Authorization": f"Bearer sk-llm-guess{i:032d}"}) as r:
                statuses.append(r.status)
                if r.status == 429:
                    retry_after = r.headers.get("Retry-After")
                    assert (await r.json())["error"]["code"] == "auth_throttled"
    assert statuses == [401] * 20 + [429] * 10
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    for key in (good, MASTER):                           # good keys from the same address are unaffected
        st, _ = await call(server, "POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {key}"})
        assert st == 200
    st, page = await call(server, "GET", "/admin/audit?limit=100")
    actions = [e["action"] for e in page["data"]]
    assert actions.count("auth.failure") == 20 and actions.count("auth.throttled") == 10
    ev = next(e for e in page["data"] if e["action"] == "auth.throttled")
    assert ev["ip"] == "127.0.0.1" and ev["detail"]["key_prefix"].startswith("sk-llm-gue")


def test_the_throttle_window_and_table_are_bounded():
    now = [0.0]
    t = AuthThrottle(2, clock=lambda: now[0])
    assert [t.failed("a"), t.failed("a"), t.failed("b")] == [None, None, None]
    assert t.failed("a") == 60
    now[0] = 59.5
    assert t.failed("a") == 1
    now[0] = 60.0                                        # a new minute
    assert t.failed("a") is None
    assert AuthThrottle(0).failed("a") is None          # 0 = unlimited


async def test_after_the_redis_cooldown_one_probe_decides_for_everyone(aiohttp_server, blackhole):
    cfg = make_config(storage={"redis": f"redis://127.0.0.1:{blackhole}/0"},
                      limits={"global": {"rpm": 1_000_000}, "redis_timeout": 0.05, "breaker_cooldown": 0.2})
    server = await aiohttp_server(build_app(cfg, build_gateway(cfg)))     # no ledger: no key pub/sub
    limiter = server.app[GATEWAY].limits.limiter
    body = {"model": "mock", "messages": MSG}
    headers = {"Authorization": f"Bearer {MASTER}"}
    assert (await call(server, "POST", "/v1/chat/completions", body, headers))[0] == 200   # fail_open
    assert limiter.breaker.is_open
    errors = limiter.stats["redis_errors"]
    await asyncio.sleep(0.25)                            # the cooldown is over: half-open

    async def one() -> int:
        return (await call(server, "POST", "/v1/chat/completions", body, headers))[0]

    assert await asyncio.gather(*(one() for _ in range(20))) == [200] * 20
    assert limiter.stats["redis_errors"] == errors + 1   # one probe went to Redis; the others skipped it
    assert not limiter.breaker.closed                    # the probe failed: open again for a cooldown


async def test_a_cache_probe_that_never_reports_frees_the_half_open_place(blackhole):
    kv = RedisKV(f"redis://127.0.0.1:{blackhole}/0", timeout=0.05, cooldown=0.1)
    try:
        with pytest.raises(KVError):
            await kv.get("k")
        await asyncio.sleep(0.12)
        probe = asyncio.create_task(kv.get("k"))
        await asyncio.sleep(0.01)
        with pytest.raises(KVError, match="circuit open"):
            await kv.get("k")                            # the probe is out: this call does not wait
        probe.cancel()                                   # a probe cancelled mid-way never reports...
        await asyncio.sleep(0.11)
        t0 = time.monotonic()
        with pytest.raises(KVError):
            await kv.get("k")                            # ...and after probe_timeout another may probe
        assert time.monotonic() - t0 >= 0.05
    finally:
        await kv.close()


async def test_exporter_shutdown_with_a_hung_collector_is_bounded_by_the_export_timeout(start_proxy, blackhole):
    cfg = make_config(telemetry={"tracing": {"endpoint": f"http://127.0.0.1:{blackhole}", "export_timeout": 0.5}})
    server = await start_proxy(cfg)
    tracing = server.app[GATEWAY].telemetry.tracing
    headers = {"Authorization": f"Bearer {MASTER}"}
    for _ in range(3):
        assert (await call(server, "POST", "/v1/chat/completions", {"model": "mock", "messages": MSG},
                           headers))[0] == 200
    assert not await tracing.flush(0.2)                 # the collector never answers
    t0 = time.monotonic()
    await tracing.shutdown()
    took = time.monotonic() - t0
    assert took < 0.5 + 0.4, took
    assert not tracing.exporter.alive
