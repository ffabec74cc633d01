"""Rate limits with the in-process backend: GCRA levels, atomic multi-level take, settling, priority,
concurrency, headers on every answer, /v1/quota."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.cost.tokens import Tokenizer  # exact counting (off the request path)
from proxy.limits import Level, format_reset
from proxy.limits.memory import MemoryLimiter
from proxy.limits.tokens import TokenEstimator, heuristic
from tests.conftest import MASTER, make_config

AUTH = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _post(server, body, headers=None):
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/v1/chat/completions"), data=orjson.dumps(body),
                          headers={**AUTH, **(headers or {})}) as r:
            return r.status, r.headers.copy(), await r.read()


async def _quota(server, key=MASTER, query=""):
    async with aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/v1/quota" + query), headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


# -- the limiter itself ----------------------------------------------------------------------------------

async def test_gcra_burst_then_refill_and_retry_after():
    clock = Clock()
    lim = MemoryLimiter(clock)
    lv = [Level("global", "g", rpm=3)]
    for i in range(3):
        d = await lim.acquire(lv, 0, False, "l")
        assert d.allowed and d.states[0].remaining_requests == 2 - i
    d = await lim.acquire(lv, 0, False, "l")
    assert not d.allowed and d.reason == "requests" and d.retry_after == pytest.approx(20.0)
    clock.t += 20.0                          # one request's worth refilled (60 s / 3)
    assert (await lim.acquire(lv, 0, False, "l")).allowed
    assert not (await lim.acquire(lv, 0, False, "l")).allowed


async def test_all_levels_taken_in_one_step_or_none():
    lim = MemoryLimiter(Clock())
    wide, narrow = Level("global", "g", rpm=100, tpm=10_000), Level("key:k", "k:k", rpm=1)
    assert (await lim.acquire([wide, narrow], 50, False, "a")).allowed
    d = await lim.acquire([wide, narrow], 50, False, "b")
    assert not d.allowed and d.denied is narrow
    # the refused request took nothing at the wider level
    st = (await lim.peek([wide]))[0]
    assert st.remaining_requests == 99 and st.remaining_tokens == 9_950


async def test_tokens_reserved_then_settled_both_ways():
    lim = MemoryLimiter(Clock())
    lv = [Level("global", "g", tpm=1000)]
    assert (await lim.acquire(lv, 300, False, "a")).allowed
    await lim.settle(lv, "a", 300, 100)          # used less: 200 refunded
    assert (await lim.peek(lv))[0].remaining_tokens == 900
    assert (await lim.acquire(lv, 100, False, "b")).allowed
    await lim.settle(lv, "b", 100, 850)          # used more: the debt counts
    assert (await lim.peek(lv))[0].remaining_tokens == 50
    d = await lim.acquire(lv, 100, False, "c")
    assert not d.allowed and d.reason == "tokens" and d.retry_after == pytest.approx(3.0)
    d = await lim.acquire(lv, 1001, True, "d")
    assert not d.allowed and d.reason == "too_large"


async def test_priority_reserve_and_concurrency():
    lim = MemoryLimiter(Clock())
    lv = [Level("global", "g", rpm=10, concurrency=4, reserve=0.5)]
    low = [await lim.acquire(lv, 0, False, str(i)) for i in range(3)]
    assert [d.allowed for d in low] == [True, True, False]        # low priority: half of 4 in flight
    await lim.settle(lv, "0", 0, 0)
    await lim.settle(lv, "1", 0, 0)
    low = [await lim.acquire(lv, 0, False, str(i)) for i in range(5)]
    assert sum(d.allowed for d in low) == 2 and low[2].reason == "concurrency"
    for i in range(2):
        await lim.settle(lv, str(i), 0, 0)
    # 4 requests taken, 5 of 10 are for low priority: one more low, then only high ones
    assert (await lim.acquire(lv, 0, False, "x")).allowed
    await lim.settle(lv, "x", 0, 0)
    d = await lim.acquire(lv, 0, False, "y")
    assert not d.allowed and d.reason == "requests"
    assert (await lim.acquire(lv, 0, True, "z")).allowed


def test_token_estimate_needs_no_tables_heuristic_or_byte_bound():
    est = TokenEstimator(default_max_tokens=100)
    text = "Hello world, how are you today?"
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 7}

    class C:
        endpoint = "chat.completions"
    C.body = body      # type: ignore[attr-defined]
    known = est.estimate(C, "gpt-4o-mini")
    assert known == est.estimate(C, "claude-x") == 3 + heuristic(text) + 3 + 7    # chars/4, any model
    del body["max_tokens"]
    assert est.estimate(C, "claude-x") == known - 7 + 100
    body["messages"] = [{"role": "user", "content": "héllo wörld ✓ " * 50}]
    bound = TokenEstimator(default_max_tokens=0, tokenizer="bytes").estimate(C, "gpt-4o-mini")
    assert bound >= Tokenizer().count_prompt("gpt-4o-mini", body, "chat.completions")
    assert bound == 3 + len(("héllo wörld ✓ " * 50).encode()) + 3       # no max_tokens, default 0


def test_serving_a_tpm_limit_loads_no_token_tables(tmp_path):
    """Start-up and a TPM-limited request with a gpt-4o target import no tokenizer (in a fresh process:
    this test process may have loaded one for other tests)."""
    code = (
        "import asyncio, sys\n"
        "from aiohttp import web\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "from proxy.app import build_app\n"
        "from proxy.config import parse\n"
        "cfg = parse({'server': {'master_key': 'sk-m'}, 'storage': {'database': 'sqlite://:memory:'},\n"
        "             'providers': {'local': {'type': 'mock'}},\n"
        "             'models': [{'name': 'gpt-4o', 'targets': [{'provider': 'local', 'model': 'gpt-4o'}]}],\n"
        "             'limits': {'global': {'tpm': 1000000}}}, env={})\n"
        "async def main():\n"
        "    async with TestClient(TestServer(build_app(cfg))) as c:\n"
        "        r = await c.post('/v1/chat/completions', json={'model': 'gpt-4o', 'messages': [\n"
        "            {'role': 'user', 'content': 'hi ' * 500}]}, headers={'Authorization': 'Bearer sk-m'})\n"
        "        assert r.status == 200, await r.text()\n"
        "        assert int(r.headers['x-ratelimit-remaining-tokens']) < 1000000\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if 'bpe' in m or 'tiktoken' in m))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_reset_format():
    assert [format_reset(x) for x in (0.02, 1, 8.64, 360, 61.4)] == ["20ms", "1s", "8.64s", "6m0s", "1m1s"]


# -- through HTTP ---------------------------------------------------------------------------------------

async def test_headers_on_success_and_on_429_with_retry_after(start_proxy):
    server = await start_proxy(make_config(limits={"global": {"rpm": 2, "tpm": 100_000}}))
    for left in (1, 0):
        status, h, _ = await _post(server, {"model": "mock", "messages": MSG})
        assert status == 200
        assert h["x-ratelimit-limit-requests"] == "2" and h["x-ratelimit-remaining-requests"] == str(left)
        assert h["x-ratelimit-limit-tokens"] == "100000" and int(h["x-ratelimit-remaining-tokens"]) < 100_000
        assert h["x-ratelimit-reset-requests"].endswith("s") and "x-ratelimit-reset-tokens" in h
    status, h, raw = await _post(server, {"model": "mock", "messages": MSG})
    err = orjson.loads(raw)["error"]
    assert status == 429 and err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
    assert h["retry-after"] == "30"                      # 60 s / 2 requests, rounded up
    assert h["x-ratelimit-remaining-requests"] == "0" and h["x-ratelimit-limit-requests"] == "2"


async def test_refusals_do_not_count_and_later_errors_carry_headers(start_proxy):
    server = await start_proxy(make_config(
        providers={"local": {"type": "mock"}, "dead": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        models=[{"name": "mock", "targets": [{"provider": "local", "model": "mock"}]},
                {"name": "dead", "targets": [{"provider": "dead", "model": "x"}]}],
        routing={"retries": 0}, limits={"global": {"rpm": 10}}))
    status, h, _ = await _post(server, {"model": "nope", "messages": MSG})
    assert status == 404 and "x-ratelimit-remaining-requests" not in h     # refused before the limits
    status, h, _ = await _post(server, {"model": "mock", "messages": MSG})
    assert status == 200 and h["x-ratelimit-remaining-requests"] == "9"
    status, h, _ = await _post(server, {"model": "dead", "messages": MSG})   # an error from the router
    assert status == 502 and h["x-ratelimit-remaining-requests"] == "8"
    assert h["x-llm-provider"] == "dead" and h["x-llm-attempts"] == "1"     # who failed, on the error too


async def test_priority_share_is_kept_for_high_priority(start_proxy):
    server = await start_proxy(make_config(limits={"global": {"rpm": 4, "priority_reserve": 0.5},
                                                   "priority_threshold": 5}))
    low = [(await _post(server, {"model": "mock", "messages": MSG}))[0] for _ in range(3)]
    assert low == [200, 200, 429]
    high_meta = {"model": "mock", "messages": MSG, "metadata": {"priority": 9}}
    assert (await _post(server, high_meta))[0] == 200
    assert (await _post(server, {"model": "mock", "messages": MSG}, {"x-llm-priority": "5"}))[0] == 200
    assert (await _post(server, high_meta))[0] == 429     # the whole limit is used now
    assert (await _post(server, {**high_meta, "metadata": {"priority": 4}}))[0] == 429


async def test_concurrency_limit_with_slow_streams(start_proxy):
    server = await start_proxy(make_config(
        providers={"local": {"type": "mock", "token_delay_ms": 40, "reply_tokens": 10}},
        limits={"models": {"mock": {"max_concurrency": 2}}}))
    body = {"model": "mock", "messages": MSG, "stream": True}
    first = [asyncio.create_task(_post(server, body)) for _ in range(2)]
    await asyncio.sleep(0.15)                   # both streams are open now
    status, h, raw = await _post(server, body)
    assert status == 429 and "concurrent" in orjson.loads(raw)["error"]["message"]
    assert h["retry-after"] == "1"
    assert [r[0] for r in await asyncio.gather(*first)] == [200, 200]
    await asyncio.sleep(0.05)                   # the slots are released once the last byte went out
    status, _, raw = await _post(server, body)
    assert status == 200 and b"[DONE]" in raw


async def test_token_limit_holds_for_streams_settled_on_real_usage(start_proxy):
    # Each stream reserves ~8 tokens (default_max_tokens 1) but really uses ~104 (mock: 100 words).
    server = await start_proxy(make_config(
        providers={"local": {"type": "mock", "reply_tokens": 100}},
        limits={"global": {"tpm": 1000}, "default_max_tokens": 1}))
    body = {"model": "mock", "messages": MSG, "stream": True}
    statuses = []
    for _ in range(15):
        status, _, raw = await _post(server, body)
        statuses.append(status)
        await asyncio.sleep(0.02)               # settling runs right after the last byte
        if status == 429:
            assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"
            break
    # 1000 tokens / 104 real tokens per stream: the 10th stream is the last that fits (estimates alone
    # would have let 125 through)
    assert statuses.count(200) in (9, 10) and statuses[-1] == 429
    q = await _quota(server)
    glob = next(level for level in q["limits"] if level["level"] == "global")
    assert glob["tpm"] == 1000 and glob["remaining_tokens"] < 104


async def test_quota_shows_a_virtual_keys_own_limits(start_proxy, tmp_path):
    server = await start_proxy(make_config(storage={"database": f"sqlite:///{tmp_path}/l.db"},
                                           limits={"sources": {"*": {"rpm": 100}}}))
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/admin/keys"), headers=AUTH,
                          json={"name": "app", "rpm": 3, "tpm": 5000, "max_concurrency": 2,
                                "source_id": "team-a"}) as r:
            assert r.status in (200, 201), await r.text()
            secret = (await r.json())["key"]
    ok = await _post(server, {"model": "mock", "messages": MSG}, {"Authorization": f"Bearer {secret}"})
    assert ok[0] == 200 and ok[1]["x-ratelimit-limit-requests"] == "3"
    q = await _quota(server, secret)
    levels = {lv["level"]: lv for lv in q["limits"]}
    assert levels["key"]["rpm"] == 3 and levels["key"]["remaining_requests"] == 2
    assert levels["key"]["tpm"] == 5000 and levels["key"]["max_concurrency"] == 2
    assert levels["key"]["inflight"] == 0
    assert levels["source"]["name"] == "team-a" and levels["source"]["remaining_requests"] == 99
    for _ in range(2):
        await _post(server, {"model": "mock", "messages": MSG}, {"Authorization": f"Bearer {secret}"})
    status, h, _ = await _post(server, {"model": "mock", "messages": MSG}, {"Authorization": f"Bearer {secret}"})
    assert status == 429 and h["retry-after"] == "20"
    # the master key is not limited at key level, and other keys are untouched
    assert (await _post(server, {"model": "mock", "messages": MSG}))[0] == 200
    async with aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/v1/quota")) as r:
            assert r.status == 401


async def test_cache_hit_still_counts(start_proxy):
    server = await start_proxy(make_config(limits={"global": {"rpm": 2}}))
    body = {"model": "mock", "messages": MSG, "cache": True}
    assert (await _post(server, body))[0] == 200
    status, h, _ = await _post(server, body)
    assert status == 200 and h.get("x-llm-cache") == "HIT" and h["x-ratelimit-remaining-requests"] == "0"
    assert (await _post(server, body))[0] == 429
