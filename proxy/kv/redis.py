"""Redis cache store (redis.asyncio). Short timeouts and a circuit breaker: a dead or slow Redis makes the
cache miss quickly instead of slowing every request, and is not retried until the cooldown has passed.

Layout under `prefix`: `e:<key>` holds a value (with PX expiry); `t:<tag>` is a sorted set of entry keys
scored by their expiry time, pruned on every write, so tag sets never outgrow the live entries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.kv import KVError

log = logging.getLogger("proxy.kv.redis")
T = TypeVar("T")
_BATCH = 500


class Breaker:
    """Open for `cooldown` seconds after a failure; then one call probes (half-open) while the others go
    on skipping Redis, until the probe's answer closes or re-opens it: a cooldown's end costs one call a
    timeout, not every call in flight. A probe that never reports (cancelled) frees the half-open place
    after `probe_timeout`."""

    __slots__ = ("cooldown", "open_until", "probe_timeout", "probe_until")

    def __init__(self, cooldown: float, probe_timeout: float = 1.0) -> None:
        self.cooldown = cooldown
        self.probe_timeout = probe_timeout
        self.open_until = 0.0
        self.probe_until = 0.0

    @property
    def closed(self) -> bool:
        return self.open_until == 0.0

    @property
    def is_open(self) -> bool:
        """Would a call skip Redis now? (No side effect: `allow` is the one that admits a probe.)"""
        if self.open_until == 0.0:
            return False
        now = time.monotonic()
        return now < self.open_until or now < self.probe_until

    def allow(self) -> bool:
        """May this call use Redis? Closed: yes; open: no; half-open: yes for the one probe."""
        if self.open_until == 0.0:
            return True
        now = time.monotonic()
        if now < self.open_until or now < self.probe_until:
            return False
        self.probe_until = now + self.probe_timeout
        return True

    def trip(self) -> None:
        self.open_until = time.monotonic() + self.cooldown
        self.probe_until = 0.0

    def reset(self) -> None:
        self.open_until = 0.0
        self.probe_until = 0.0


class RedisKV:
    def __init__(self, url: str, *, prefix: str = "llm:cache:", timeout: float = 0.25,
                 cooldown: float = 5.0, client: Redis | None = None) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.breaker = Breaker(cooldown, probe_timeout=timeout * 2)
        self.client = client or Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            health_check_interval=0)

    def _e(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def _t(self, tag: str) -> str:
        return f"{self.prefix}t:{tag}"

    async def _run(self, op: Callable[[], Awaitable[T]], budget: float | None = None) -> T:
        if not self.breaker.allow():
            raise KVError("redis circuit open")
        try:
            async with asyncio.timeout(budget or self.timeout * 2):
                result = await op()
        except (RedisError, OSError, TimeoutError) as e:
            if self.breaker.closed:
                # The URL may hold a password: log only the error class.
                log.warning("redis cache unavailable (%s); skipping it for %gs", type(e).__name__,
                            self.breaker.cooldown)
            self.breaker.trip()
            raise KVError(type(e).__name__) from None
        self.breaker.reset()
        return result

    async def get(self, key: str) -> bytes | None:
        value = await self._run(lambda: self.client.get(self._e(key)))
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        if ttl <= 0:
            return
        now = time.time()
        expires = now + ttl
        ttl_ms = max(1, int(ttl * 1000))

        async def op() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self._e(key), value, px=ttl_ms)
            for tag in tags:
                t = self._t(tag)
                pipe.zremrangebyscore(t, "-inf", now)
                pipe.zadd(t, {key: expires})
                pipe.expire(t, int(ttl) + 1, nx=True)
                pipe.expire(t, int(ttl) + 1, gt=True)
            await pipe.execute()
        await self._run(op)

    async def delete(self, key: str) -> int:
        return int(await self._run(lambda: self.client.delete(self._e(key))))

    async def delete_tagged(self, tag: str) -> int:
        """Deletes the tag's entries in batches (no SCAN of the keyspace), then the tag set itself."""
        t = self._t(tag)

        async def op() -> int:
            deleted = 0
            while True:
                members = await self.client.zrange(t, 0, _BATCH - 1)
                if not members:
                    break
                keys = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
                pipe = self.client.pipeline(transaction=False)
                pipe.delete(*(self._e(k) for k in keys))
                pipe.zrem(t, *members)
                n, _ = await pipe.execute()
                deleted += int(n)
            await self.client.delete(t)
            return deleted
        return await self._run(op, budget=60.0)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            pass
