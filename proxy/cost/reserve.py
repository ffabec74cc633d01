"""Atomic budget counters: reserve the worst case before a call, settle the real cost after it.

A counter holds `spent` (settled nano-dollars) and `reserved` (worst cases of calls in flight). A
reservation is admitted only if spent + reserved + amount <= limit, checked and added in one step:
in-process that step has no `await` in it (one event loop = atomic); with Redis it is one Lua script,
so any number of proxy processes sharing Redis can never overspend together.

A counter is seeded once per period from the ledger (the summed cost of the period so far), so spend
survives restarts. Settling returns the spend before and after, so exactly one settle sees a threshold
crossed: alerts fire once per period even across processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

Seed = Callable[[], Awaitable[int]]


class Reservations(Protocol):
    async def reserve(self, key: str, amount: int, limit: int | None, seed: Seed, ttl: int | None) -> bool: ...
    async def settle(self, key: str, reserved: int, actual: int) -> tuple[int, int]: ...
    async def read(self, key: str) -> tuple[int, int] | None: ...
    async def close(self) -> None: ...


class LocalReservations:
    """One process: a dict of [spent, reserved]. Seeding awaits the ledger under a per-counter lock."""

    def __init__(self) -> None:
        self._counters: dict[str, list[int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _counter(self, key: str, seed: Seed) -> list[int]:
        c = self._counters.get(key)
        if c is not None:
            return c
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            c = self._counters.get(key)
            if c is None:
                c = [await seed(), 0]
                self._forget_older(key)
                self._counters[key] = c
        self._locks.pop(key, None)
        return c

    def _forget_older(self, key: str) -> None:
        """A new period's counter replaces the previous periods' of the same budget and scope value."""
        stem = key.rsplit("|", 1)[0] + "|"
        for k in [k for k in self._counters if k.startswith(stem)]:
            if self._counters[k][1] == 0:
                del self._counters[k]

    async def reserve(self, key: str, amount: int, limit: int | None, seed: Seed, ttl: int | None) -> bool:
        c = await self._counter(key, seed)
        # No await from here on: check-and-add is atomic on the event loop.
        if limit is not None and c[0] + c[1] + amount > limit:
            return False
        c[1] += amount
        return True

    async def settle(self, key: str, reserved: int, actual: int) -> tuple[int, int]:
        c = self._counters.setdefault(key, [0, reserved])
        before = c[0]
        c[1] = max(0, c[1] - reserved)
        c[0] += actual
        return before, c[0]

    async def read(self, key: str) -> tuple[int, int] | None:
        c = self._counters.get(key)
        return (c[0], c[1]) if c is not None else None

    async def close(self) -> None:
        pass


# KEYS[1] = counter hash. ARGV = amount, limit (-1: none). Returns -2 if unseeded, -1 if over, else 1.
_RESERVE = """
local spent = redis.call('HGET', KEYS[1], 'spent')
if not spent then return -2 end
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if limit >= 0 and tonumber(spent) + reserved + amount > limit then return -1 end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
return 1
"""

# ARGV = seed value, ttl (0: none). Sets spent only if no one seeded it first.
_SEED = """
if redis.call('HSETNX', KEYS[1], 'spent', ARGV[1]) == 1 then
  redis.call('HSETNX', KEYS[1], 'reserved', 0)
  if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
return 1
"""

# ARGV = reserved, actual. Returns {spent before, spent after}.
_SETTLE = """
local before = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local r = tonumber(redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1])))
if r < 0 then redis.call('HSET', KEYS[1], 'reserved', 0) end
local after = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
return {before, after}
"""


class RedisReservations:
    """Counters shared by every process on one Redis: `<prefix><budget>|<scope value>|<period start>`."""

    def __init__(self, url: str, prefix: str) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = prefix
        self._reserve = self.redis.register_script(_RESERVE)
        self._seed = self.redis.register_script(_SEED)
        self._settle = self.redis.register_script(_SETTLE)

    async def reserve(self, key: str, amount: int, limit: int | None, seed: Seed, ttl: int | None) -> bool:
        k = self.prefix + key
        args = [amount, -1 if limit is None else limit]
        res = int(await self._reserve(keys=[k], args=args))
        if res == -2:
            await self._seed(keys=[k], args=[await seed(), ttl or 0])
            res = int(await self._reserve(keys=[k], args=args))
        return res == 1

    async def settle(self, key: str, reserved: int, actual: int) -> tuple[int, int]:
        before, after = await self._settle(keys=[self.prefix + key], args=[reserved, actual])
        return int(before), int(after)

    async def read(self, key: str) -> tuple[int, int] | None:
        vals = await self.redis.hmget(self.prefix + key, ["spent", "reserved"])
        if vals[0] is None:
            return None
        return int(vals[0]), int(vals[1] or 0)

    async def close(self) -> None:
        await self.redis.aclose()
