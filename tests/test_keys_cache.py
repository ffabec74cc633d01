"""The cached key lookup: TTL, negative caching, one query per key under load, stale-if-error,
and Redis pub/sub invalidation across two replicas sharing one ledger."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.errors import Unauthorized, Unavailable
from proxy.keys import KEY_PREFIX, KeyHasher, LedgerKeyLookup, new_key_id, new_secret
from proxy.pipeline.auth import Authenticator, Principal
from proxy.store import KeyRecord
from tests.conftest import require_service
from tests.keys_helpers import call, chat, create_key, key_config


class FakeLedger:
    def __init__(self) -> None:
        self.recs: dict[str, KeyRecord] = {}
        self.calls = 0
        self.fail = False
        self.delay = 0.0

    async def find_key(self, key_hash: str, now: float) -> KeyRecord | None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError("db down")
        return self.recs.get(key_hash)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def setup(secret_server: str = "") -> tuple[FakeLedger, LedgerKeyLookup, Clock, str, KeyHasher]:
    led, clock, hasher = FakeLedger(), Clock(), KeyHasher(secret_server)
    secret = new_secret()
    h = hasher.digest(secret)
    led.recs[h] = KeyRecord(id="key_1", key_hash=h, key_prefix=secret[:11], models=["a*"], rpm=3)
    return led, LedgerKeyLookup(led, hasher, ttl=0.5, clock=clock), clock, secret, hasher  # type: ignore[arg-type]


async def test_ttl_cache_and_principal_fields():
    led, lookup, clock, secret, _ = setup()
    p = await lookup.find(secret)
    assert isinstance(p, Principal) and p.id == "key_1" and p.rpm == 3 and p.may_use("abc") and not p.may_use("b")
    await lookup.find(secret)
    assert led.calls == 1
    clock.t += 0.6
    await lookup.find(secret)
    assert led.calls == 2
    lookup.invalidate("key_1")
    await lookup.find(secret)
    assert led.calls == 3


async def test_unknown_keys_are_cached_and_foreign_formats_never_hit_the_ledger():
    led, lookup, _, _, _ = setup()
    bad = KEY_PREFIX + "x" * 43
    for _ in range(5):
        with pytest.raises(Unauthorized):
            await lookup.find(bad)
    assert led.calls == 1
    assert await lookup.find("sk-proj-openai-key") is None
    assert led.calls == 1


async def test_concurrent_misses_share_one_query():
    led, lookup, _, secret, _ = setup()
    led.delay = 0.05
    got = await asyncio.gather(*(lookup.find(secret) for _ in range(50)))
    assert led.calls == 1 and all(p.id == "key_1" for p in got)


async def test_stale_entry_is_used_when_the_ledger_fails_then_503():
    led, lookup, clock, secret, _ = setup()
    await lookup.find(secret)
    led.fail = True
    clock.t += 5
    assert (await lookup.find(secret)).id == "key_1"          # stale-if-error
    clock.t += 60
    with pytest.raises(Unavailable):
        await lookup.find(secret)


async def test_hmac_server_secret_changes_the_stored_hash():
    plain, keyed = KeyHasher(""), KeyHasher("server-secret")
    s = new_secret()
    assert plain.digest(s) != keyed.digest(s) and len(keyed.digest(s)) == 64
    assert s not in keyed.digest(s)
    first = new_key_id()
    await asyncio.sleep(0.002)
    assert first < new_key_id()                                 # time-ordered ids


def test_glob_and_exact_model_lists():
    p = Principal(id="k", models=("gpt-4o*", "claude-?-x", "exact"))
    assert p.may_use("gpt-4o-mini") and p.may_use("claude-3-x") and p.may_use("exact")
    assert not p.may_use("gpt-3.5") and not p.may_use("exactly")
    assert Principal(id="k", models=()).may_use("a") is False
    assert Principal(id="k").may_use("anything")


async def test_authenticator_with_cached_lookup():
    _, lookup, _, secret, _ = setup()
    auth = Authenticator("sk-master", lookup)
    assert (await auth.authenticate("sk-master")).is_master
    assert (await auth.authenticate(secret)).id == "key_1"
    with pytest.raises(Unauthorized):
        await auth.authenticate(secret[:-1])


async def test_redis_invalidation_reaches_another_replica_at_once(start_proxy, tmp_path):
    import redis.asyncio as aioredis
    url = "redis://127.0.0.1:6379/0"
    try:
        r = aioredis.from_url(url)
        await r.ping()
        await r.aclose()
    except Exception as e:
        require_service("redis", f"{type(e).__name__}: {e}")
    db = f"sqlite:///{tmp_path}/shared.db"
    # A long TTL: only the pub/sub message can make the second replica forget the key in time.
    cfg = key_config(db, storage={"key_cache_ttl": 30, "redis": url})
    one, two = await start_proxy(cfg), await start_proxy(cfg)
    created = await create_key(one)
    assert (await chat(two, created["key"]))[0] == 200          # cached on replica two for 30 s
    await call(one, "DELETE", f"/admin/keys/{created['id']}")
    t0 = time.monotonic()
    while (await chat(two, created["key"]))[0] != 401:
        assert time.monotonic() - t0 < 1.0, "replica two still accepts a revoked key"
        await asyncio.sleep(0.02)


async def test_without_redis_a_short_ttl_bounds_revocation_across_replicas(start_proxy, tmp_path):
    cfg = key_config(f"sqlite:///{tmp_path}/shared.db", storage={"key_cache_ttl": 0.5})
    one, two = await start_proxy(cfg), await start_proxy(cfg)
    created = await create_key(one)
    assert (await chat(two, created["key"]))[0] == 200
    await call(one, "PATCH", f"/admin/keys/{created['id']}", {"disabled": True})
    t0 = time.monotonic()
    while (await chat(two, created["key"]))[0] != 401:
        assert time.monotonic() - t0 < 1.0
        await asyncio.sleep(0.02)
