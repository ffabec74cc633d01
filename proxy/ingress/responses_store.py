"""Stored responses: what `previous_response_id` continues from, and what GET /v1/responses/{id} returns.

Kept in the ledger (`responses.store: ledger`, the default: the stored_responses table, SQLite or
PostgreSQL, so replicas share it) or in the kv store (`kv`: Redis when `storage.redis` is set, else an
in-process LRU), with a TTL either way (`responses.store_ttl`). Rows are keyed by the calling key's id, so
one tenant can neither read nor continue another's responses. A response created by a pass-through target
lives at its provider instead; only its id and that provider are recorded here, so that a continuation is
known to be valid and goes to the provider (and so the key) that holds it.

Saves are queued by the (synchronous) render and written in batches, one transaction each, by a flush the
store owns (`FLUSH_WINDOW` after the first save queued); a read of an id whose save is still queued or being
written waits for it, so the next turn on this replica always finds the last one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import msgspec

from proxy.config import Config
from proxy.errors import LedgerUnavailable
from proxy.kv import KV, KVError
from proxy.store import Ledger
from proxy.store import responses as rows

log = logging.getLogger("proxy.responses")


class Stored(msgspec.Struct, kw_only=True):
    response: dict[str, Any] | None = None        # the Response object (None: created upstream, pass-through)
    messages: list[dict[str, Any]] = []           # the whole conversation so far, as chat messages
    provider: str | None = None                   # created upstream (pass-through): the provider holding it


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(Stored)
PURGE_EVERY = 256                                 # batches between two purges of expired ledger rows
FLUSH_WINDOW = 0.005                              # seconds saves gather before one batch write


class Backend(Protocol):
    async def get(self, tenant: str, rid: str) -> bytes | None: ...
    async def put_many(self, rows: list[tuple[str, str, bytes]]) -> None: ...
    async def delete(self, tenant: str, rid: str) -> bool: ...
    async def close(self) -> None: ...


class KVBackend:
    def __init__(self, kv: KV, ttl: float) -> None:
        self.kv, self.ttl = kv, ttl

    async def get(self, tenant: str, rid: str) -> bytes | None:
        try:
            return await self.kv.get(f"{tenant}:{rid}")
        except KVError:
            raise LedgerUnavailable("The response store is unreachable; try again shortly.") from None

    async def put_many(self, rows: list[tuple[str, str, bytes]]) -> None:
        for tenant, rid, value in rows:
            await self.kv.set(f"{tenant}:{rid}", value, self.ttl)

    async def delete(self, tenant: str, rid: str) -> bool:
        return await self.kv.delete(f"{tenant}:{rid}") > 0

    async def close(self) -> None:
        await self.kv.close()


class LedgerBackend:
    def __init__(self, ledger: Ledger, ttl: float) -> None:
        self.ledger, self.ttl = ledger, ttl
        self.saves = 0

    async def get(self, tenant: str, rid: str) -> bytes | None:
        try:
            body = await rows.get(self.ledger, tenant, rid)
        except Exception:
            raise LedgerUnavailable() from None
        return body.encode() if body is not None else None

    async def put_many(self, batch: list[tuple[str, str, bytes]]) -> None:
        await rows.put_many(self.ledger, [(t, r, v.decode()) for t, r, v in batch], self.ttl)
        self.saves += 1
        if self.saves % PURGE_EVERY == 0:
            await rows.purge(self.ledger)

    async def delete(self, tenant: str, rid: str) -> bool:
        return await rows.delete(self.ledger, tenant, rid)

    async def close(self) -> None:
        pass                                      # the ledger is the key store's to close


def kv_backend(config: Config) -> KVBackend:
    c = config.responses
    kv: KV
    if config.storage.redis:
        from proxy.kv.redis import RedisKV
        kv = RedisKV(config.storage.redis, prefix=c.prefix, timeout=config.cache.redis_timeout,
                     cooldown=config.cache.breaker_cooldown)
    else:
        from proxy.kv.memory import MemoryKV
        kv = MemoryKV(max_bytes=c.max_bytes)
    return KVBackend(kv, c.store_ttl)


class ResponsesStore:
    def __init__(self, config: Config, ledger: Ledger | None = None) -> None:
        ttl = config.responses.store_ttl
        self.backend: Backend = (LedgerBackend(ledger, ttl) if ledger is not None and config.responses.store ==
                                 "ledger" else kv_backend(config))
        self.pending: dict[tuple[str, str], asyncio.Future] = {}   # id -> the flush that writes it
        self._queue: list[tuple[str, str, bytes]] = []
        self._flush: asyncio.Future | None = None

    async def get(self, tenant: str, rid: str) -> Stored | None:
        """None: unknown or expired. Raises LedgerUnavailable (503) when the store cannot answer."""
        saving = self.pending.get((tenant, rid))
        if saving is not None:
            await asyncio.wait([saving])
        raw = await self.backend.get(tenant, rid)
        if raw is None:
            return None
        try:
            return _DEC.decode(raw)
        except msgspec.DecodeError:
            return None

    def save(self, tenant: str, rid: str, stored: Stored) -> None:
        self._queue.append((tenant, rid, _ENC.encode(stored)))
        flush = self._flush
        if flush is None:
            flush = self._flush = asyncio.ensure_future(self._write())
        key = (tenant, rid)
        self.pending[key] = flush
        flush.add_done_callback(lambda f: self.pending.pop(key, None) if self.pending.get(key) is f else None)

    async def _write(self) -> None:
        await asyncio.sleep(FLUSH_WINDOW)
        batch, self._queue, self._flush = self._queue, [], None   # later saves start the next flush
        try:
            await self.backend.put_many(batch)
        except Exception as e:                    # a store that is down loses the continuations, not the answers
            log.warning("could not store %d responses: %s", len(batch), type(e).__name__)

    async def delete(self, tenant: str, rid: str) -> bool:
        try:
            return await self.backend.delete(tenant, rid)
        except Exception:
            raise LedgerUnavailable("The response store is unreachable; try again shortly.") from None

    async def close(self) -> None:
        if self.pending:
            await asyncio.wait(list(self.pending.values()), timeout=5)
        await self.backend.close()
