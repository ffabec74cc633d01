"""Virtual keys on the hot path: the secret's format and hash, and the cached lookup behind auth.

A key is `sk-llm-` + 43 url-safe characters (256 random bits). Only its SHA-256 (or HMAC-SHA-256 with
`server.secret`) and an 11-character display prefix are stored. Lookups are cached in memory for
`storage.key_cache_ttl` seconds (default 0.5): a revoke, disable or expiry reaches every replica within
that time, and at once when Redis pub/sub invalidation is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from proxy.errors import Unauthorized, Unavailable
from proxy.pipeline.auth import Principal
from proxy.store import KeyRecord, Ledger

log = logging.getLogger("proxy.keys")

KEY_PREFIX = "sk-llm-"
DISPLAY_CHARS = len(KEY_PREFIX) + 4
INVALIDATE_CHANNEL = "llm-service:keys:invalidate"


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_CHARS]


def new_key_id() -> str:
    """Time-ordered (to the microsecond: two keys are never made within one), so `ORDER BY id` is
    creation order and makes a stable pagination cursor."""
    return f"key_{time.time_ns() // 1_000:014x}{secrets.token_hex(5)}"


class KeyHasher:
    """SHA-256 of the secret, or HMAC-SHA-256 keyed by `server.secret` (a stolen ledger alone is then useless
    for offline guessing). Changing the server secret invalidates every key."""

    def __init__(self, server_secret: str = "") -> None:
        self._hmac_key = server_secret.encode() if server_secret else None

    def digest(self, secret: str) -> str:
        if self._hmac_key is not None:
            return hmac.new(self._hmac_key, secret.encode(), hashlib.sha256).hexdigest()
        return hashlib.sha256(secret.encode()).hexdigest()


def principal_from(rec: KeyRecord) -> Principal:
    return Principal(id=rec.id, name=rec.name, models=tuple(rec.models) if rec.models is not None else None,
                     source_id=rec.source_id, source_type=rec.source_type, budget_id=rec.budget_id,
                     rpm=rec.rpm, tpm=rec.tpm, max_concurrency=rec.max_concurrency, metadata=rec.metadata,
                     expires_at=rec.expires_at)


def rejection(rec: KeyRecord | None, now: float) -> str | None:
    """Why a stored key may not authenticate, or None if it may."""
    if rec is None:
        return "Incorrect API key provided."
    if rec.revoked_at is not None:
        return "This API key has been revoked."
    if rec.disabled:
        return "This API key is disabled."
    if rec.expires_at is not None and rec.expires_at <= now:
        return "This API key has expired."
    return None


class _Entry:
    __slots__ = ("fetched", "key_id", "principal", "reason")

    def __init__(self, principal: Principal | None, reason: str | None, key_id: str | None, fetched: float):
        self.principal, self.reason, self.key_id, self.fetched = principal, reason, key_id, fetched


class LedgerKeyLookup:
    """The `KeyLookup` behind `Authenticator`: hash, then cache, then the ledger.

    Unknown credentials are cached too (bounded), so a flood of bad keys costs one query per distinct key
    per TTL. If the ledger fails, an entry up to `stale_if_error` seconds old is still honoured."""

    def __init__(self, ledger: Ledger, hasher: KeyHasher, *, ttl: float = 0.5, max_entries: int = 100_000,
                 stale_if_error: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ledger, self.hasher, self.ttl = ledger, hasher, ttl
        self.max_entries, self.stale_if_error, self.clock = max_entries, stale_if_error, clock
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self.queries = 0                     # ledger lookups made (for tests and metrics)

    async def find(self, credential: str) -> Principal | None:
        if not credential.startswith(KEY_PREFIX):
            return None
        digest = self.hasher.digest(credential)
        entry = self._cache.get(digest)
        now = self.clock()
        if entry is None or now - entry.fetched > self.ttl:
            entry = await self._refresh(digest, entry)
        p = entry.principal
        if p is None:
            raise Unauthorized(entry.reason or "Incorrect API key provided.")
        if p.expires_at is not None and p.expires_at <= time.time():
            raise Unauthorized("This API key has expired.")
        return p

    async def _refresh(self, digest: str, stale: _Entry | None) -> _Entry:
        pending = self._inflight.get(digest)
        if pending is not None:               # one query per key, however many requests wait for it
            return await asyncio.shield(pending)
        fut: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = fut
        try:
            entry = await self._load(digest, stale)
            fut.set_result(entry)
            return entry
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()                   # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(digest, None)

    async def _load(self, digest: str, stale: _Entry | None) -> _Entry:
        self.queries += 1
        try:
            rec = await self.ledger.find_key(digest, time.time())
        except Exception as e:
            if stale is not None and self.clock() - stale.fetched <= self.stale_if_error:
                return stale
            log.error("key lookup failed: %s", type(e).__name__)
            raise Unavailable("The key store is unavailable; try again shortly.") from None
        if rec is not None and not (hmac.compare_digest(rec.key_hash, digest)
                                    or hmac.compare_digest(rec.prev_hash or "", digest)):
            rec = None
        reason = rejection(rec, time.time())
        entry = _Entry(principal_from(rec) if rec is not None and reason is None else None, reason,
                       rec.id if rec is not None else None, self.clock())
        if len(self._cache) >= self.max_entries:
            for old in list(self._cache)[: max(1, self.max_entries // 10)]:   # oldest first
                del self._cache[old]
        self._cache.pop(digest, None)
        self._cache[digest] = entry
        return entry

    def invalidate(self, key_id: str | None = None) -> None:
        """Forget one key's cached lookups (every digest that mapped to it), or everything."""
        if key_id is None:
            self._cache.clear()
            return
        for digest in [d for d, e in self._cache.items() if e.key_id == key_id]:
            del self._cache[digest]


class Invalidator:
    """Tells every replica to drop a key from its cache: locally at once, others via Redis pub/sub."""

    def __init__(self, lookup: LedgerKeyLookup, redis_url: str = "") -> None:
        self.lookup, self.redis_url = lookup, redis_url
        self._redis: Any = None
        self._task: asyncio.Task[None] | None = None
        self.received = 0

    async def start(self) -> None:
        if not self.redis_url or self._task is not None:
            return
        import redis.asyncio as aioredis
        self._redis = aioredis.from_url(self.redis_url)
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._listen(ready), name="key-invalidation")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(ready), 2.0)

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        while True:
            try:
                assert self._redis is not None
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(INVALIDATE_CHANNEL)
                self.lookup.invalidate()                    # we may have missed messages while away
                if not ready.done():
                    ready.set_result(None)
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        data = msg["data"]
                        self.received += 1
                        self.lookup.invalidate(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("key invalidation channel lost (%s); retrying", type(e).__name__)
                await asyncio.sleep(1.0)

    async def publish(self, key_id: str) -> None:
        self.lookup.invalidate(key_id)
        if self.redis_url:
            try:
                if self._redis is None:
                    import redis.asyncio as aioredis
                    self._redis = aioredis.from_url(self.redis_url)
                await self._redis.publish(INVALIDATE_CHANNEL, key_id)
            except Exception as e:       # the cache TTL still bounds how long other replicas wait
                log.warning("could not publish key invalidation: %s", type(e).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
