"""The cache stores (in-memory LRU, real Redis), the entry codec and the canonical key."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from proxy.cache.entry import Entry, decode, encode
from proxy.cache.key import cache_key, controls, namespace
from proxy.config import CacheConfig, Target
from proxy.context import ChatCall, Usage
from proxy.errors import InvalidRequest
from proxy.kv import KVError
from proxy.kv.memory import MemoryKV
from proxy.kv.redis import RedisKV
from proxy.pipeline.auth import MASTER, Principal
from tests.cache_helpers import REDIS_URL, drop_prefix, new_prefix, redis_or_skip


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["memory", "redis"])
async def kv(request):
    if request.param == "memory":
        yield MemoryKV(max_bytes=1 << 20)
        return
    client = await redis_or_skip()
    prefix = new_prefix()
    store = RedisKV(REDIS_URL, prefix=prefix, timeout=0.5)
    yield store
    await store.close()
    await drop_prefix(client, prefix)
    await client.aclose()


async def test_set_get_delete_and_ttl(kv):
    await kv.set("a", b"one", 10, ("model:x",))
    await kv.set("b", b"two", 0.15, ("model:x",))
    assert await kv.get("a") == b"one" and await kv.get("b") == b"two"
    assert await kv.get("missing") is None
    await asyncio.sleep(0.25)
    assert await kv.get("b") is None
    assert await kv.delete("a") == 1 and await kv.delete("a") == 0
    assert await kv.get("a") is None


async def test_delete_tagged_removes_only_that_tag(kv):
    await kv.set("a", b"1", 10, ("model:x", "ns:1", "all"))
    await kv.set("b", b"2", 10, ("model:y", "ns:1", "all"))
    await kv.set("c", b"3", 10, ("model:x", "ns:2", "all"))
    assert await kv.delete_tagged("model:x") == 2
    assert (await kv.get("a"), await kv.get("b"), await kv.get("c")) == (None, b"2", None)
    assert await kv.delete_tagged("model:x") == 0
    assert await kv.delete_tagged("all") == 1
    assert await kv.get("b") is None


async def test_memory_lru_is_bounded_by_bytes_and_refreshed_by_reads():
    kv = MemoryKV(max_bytes=1000)
    for k in "abc":
        await kv.set(k, b"x" * 200, 10, ("t",))
    assert await kv.get("a") == b"x" * 200            # a is now the most recently used
    await kv.set("d", b"x" * 300, 10, ("t",))         # evicts b (least recent), keeps a
    assert await kv.get("b") is None and await kv.get("a") is not None
    assert kv.size <= 1000 and len(kv) == 3
    await kv.set("huge", b"x" * 2000, 10)             # larger than the whole bound: not stored
    assert await kv.get("huge") is None and await kv.get("d") is not None
    assert await kv.delete_tagged("t") == 3
    assert kv.size == 0 and len(kv) == 0


async def test_redis_tag_sets_are_pruned_of_expired_members():
    client = await redis_or_skip()
    prefix = new_prefix()
    store = RedisKV(REDIS_URL, prefix=prefix)
    try:
        await store.set("old", b"1", 0.1, ("all",))
        await asyncio.sleep(0.15)
        await store.set("new", b"2", 10, ("all",))
        assert await client.zrange(prefix + "t:all", 0, -1) == [b"new"]
        assert 9000 < await client.pttl(prefix + "e:new") <= 10000
        assert await client.ttl(prefix + "t:all") > 0
    finally:
        await store.close()
        await drop_prefix(client, prefix)
        await client.aclose()


async def test_redis_down_raises_kverror_fast_and_the_breaker_stops_retrying():
    store = RedisKV(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.2, cooldown=5)
    t0 = time.monotonic()
    with pytest.raises(KVError):
        await store.get("k")
    assert time.monotonic() - t0 < 1.0
    assert store.breaker.is_open
    t1 = time.monotonic()
    for _ in range(100):
        with pytest.raises(KVError):
            await store.set("k", b"v", 10, ("all",))
    assert time.monotonic() - t1 < 0.05                 # no connection attempts while open
    await store.close()


def test_entry_codec_compresses_large_values_and_rejects_junk():
    small = Entry(created=1.0, model="m", usage=Usage(prompt_tokens=1), body=b"{}")
    big = Entry(created=1.0, model="m", body=b'{"content": "' + b"word " * 2000 + b'"}', events=[b"data: x\n\n"])
    assert encode(small, 2048)[:1] == b"\x00" and decode(encode(small, 2048)) == small
    packed = encode(big, 2048)
    assert packed[:1] == b"\x01" and len(packed) < 1000 and decode(packed) == big
    assert decode(b"\x01garbage") is None and decode(b"\x07abc") is None and decode(b"") is None


T = Target(provider="up", model="gpt-4o-mini")
BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_key_ignores_transport_fields_and_key_order():
    k = cache_key("ns", "chat.completions", "gpt", T, BODY)
    same = {"temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "user": "u",
            "metadata": {"a": 1}, "cache": True, "messages": [{"content": "hi", "role": "user"}], "model": "x"}
    assert cache_key("ns", "chat.completions", "gpt", T, same) == k
    assert len(k) == 64 and int(k, 16) >= 0
    assert cache_key("other", "chat.completions", "gpt", T, BODY) != k
    assert cache_key("ns", "chat.completions", "gpt", Target(provider="up", model="gpt-4o"), BODY) != k
    assert cache_key("ns", "chat.completions", "gpt", T, {**BODY, "top_p": 0.5}) != k
    assert cache_key("ns", "chat.completions", "gpt", T, {**BODY, "stop": ["x"]}) != k


def test_namespace_comes_from_the_key_not_the_body():
    cfg = CacheConfig()
    assert namespace(MASTER, cfg) == "key:master"
    assert namespace(Principal(id="k1", source_id="team"), cfg) == "src:team"
    assert namespace(Principal(id="k1"), cfg) == "key:k1"
    assert namespace(Principal(id="k1", source_id="team"), CacheConfig(namespace="key")) == "key:k1"
    assert namespace(Principal(id="k1", source_id="team"), CacheConfig(namespace="shared")) == "shared"


def call_with(body=None, **headers) -> ChatCall:
    return ChatCall(body=body or dict(BODY), model="gpt", stream=False,
                    headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_controls_from_headers_and_body():
    all_mode = CacheConfig(mode="all", ttl=100, max_ttl=1000)
    c = controls(call_with(), all_mode)
    assert c is not None and (c.lookup, c.store, c.ttl, c.max_age) == (True, True, 100, None)
    c = controls(call_with(cache_control="No-Cache"), all_mode)
    assert c is not None and (c.lookup, c.store) == (False, True)
    c = controls(call_with(cache_control="no-store, max-age=30"), all_mode)
    assert c is not None and (c.lookup, c.store, c.max_age) == (True, False, 30)
    c = controls(call_with(x_llm_cache_ttl="99999"), all_mode)
    assert c is not None and c.ttl == 1000                  # capped by max_ttl
    assert controls(call_with({**BODY, "n": 3}), all_mode) is None
    assert controls(call_with({**BODY, "cache": False}), all_mode) is None
    assert controls(call_with(), CacheConfig()) is None                     # opt_in by default
    assert controls(call_with({**BODY, "options": {"cache": True}}), CacheConfig()) is not None
    with pytest.raises(InvalidRequest):
        controls(call_with(cache_control="max-age=-1"), all_mode)


@pytest.mark.parametrize(("bad", "message"), [
    ({"ttl": -1}, "cache.ttl: must be >= 0"),
    ({"mode": "sometimes"}, "cache.mode: Invalid enum value 'sometimes'"),
    ({"redis_timeout": 0}, "cache.redis_timeout: must be > 0"),
    ({"namespace": "everyone"}, "cache.namespace: Invalid enum value 'everyone'"),
])
def test_bad_cache_config_names_the_field(bad, message):
    from proxy.config import ConfigError, parse
    with pytest.raises(ConfigError) as e:
        parse({"server": {"master_key": "x"}, "cache": bad}, env={})
    assert str(e.value) == message
