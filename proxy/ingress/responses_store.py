"""Stored responses: what `previous_response_id` continues from, and what GET /v1/responses/{id} returns.

Kept in the kv store with a TTL (`responses.store_ttl`), not the ledger: Redis when `storage.redis` is set
(shared by replicas), else an in-process LRU. Keys are scoped by the calling key's id, so one tenant can
neither read nor continue another's responses. A response created by a pass-through target lives at its
provider instead; only its id and that provider are recorded here, so that a continuation is known to be
valid and goes to the provider (and so the key) that holds it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from proxy.config import Config
from proxy.kv import KV, KVError


class Stored(msgspec.Struct, kw_only=True):
    response: dict[str, Any] | None = None        # the Response object (None: created upstream, pass-through)
    messages: list[dict[str, Any]] = []           # the whole conversation so far, as chat messages
    provider: str | None = None                   # created upstream (pass-through): the provider holding it


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(Stored)


class ResponsesStore:
    def __init__(self, config: Config, kv: KV | None = None) -> None:
        c = config.responses
        self.ttl = c.store_ttl
        if kv is None:
            if config.storage.redis:
                from proxy.kv.redis import RedisKV
                kv = RedisKV(config.storage.redis, prefix=c.prefix, timeout=config.cache.redis_timeout,
                             cooldown=config.cache.breaker_cooldown)
            else:
                from proxy.kv.memory import MemoryKV
                kv = MemoryKV(max_bytes=c.max_bytes)
        self.kv = kv
        self.pending: set[asyncio.Task] = set()    # saves in flight (awaited on shutdown)

    @staticmethod
    def _key(tenant: str, rid: str) -> str:
        return f"{tenant}:{rid}"

    async def get(self, tenant: str, rid: str) -> Stored | None:
        try:
            raw = await self.kv.get(self._key(tenant, rid))
        except KVError:
            return None
        if raw is None:
            return None
        try:
            return _DEC.decode(raw)
        except msgspec.DecodeError:
            return None

    async def put(self, tenant: str, rid: str, stored: Stored) -> None:
        try:
            await self.kv.set(self._key(tenant, rid), _ENC.encode(stored), self.ttl)
        except KVError:
            pass                     # a store that is down loses the continuation, not the answer

    def save(self, tenant: str, rid: str, stored: Stored) -> None:
        """From a synchronous render: the write runs in a task the store keeps."""
        task = asyncio.ensure_future(self.put(tenant, rid, stored))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def delete(self, tenant: str, rid: str) -> bool:
        try:
            return await self.kv.delete(self._key(tenant, rid)) > 0
        except KVError:
            return False

    async def close(self) -> None:
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=5)
        await self.kv.close()
