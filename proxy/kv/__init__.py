"""Key-value storage for the response cache: bytes values with a TTL and tag sets for invalidation.

Two backends share the `KV` protocol: `MemoryKV` (in-process LRU bounded by bytes, the default) and
`RedisKV` (shared by replicas). Tags (e.g. "model:gpt", "ns:team-a", "all") index entries so that an
invalidation deletes what it names without scanning the keyspace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.config import Config


class KVError(Exception):
    """The store could not answer (down, slow, circuit open). Callers treat it as a miss / skipped write."""


class KV(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None: ...
    async def delete(self, key: str) -> int: ...
    async def delete_tagged(self, tag: str) -> int: ...
    async def close(self) -> None: ...


def build_kv(config: Config) -> KV:
    """Redis when `storage.redis` is set, the in-process LRU otherwise."""
    c = config.cache
    if config.storage.redis:
        from proxy.kv.redis import RedisKV
        return RedisKV(config.storage.redis, prefix=c.prefix, timeout=c.redis_timeout,
                       cooldown=c.breaker_cooldown)
    from proxy.kv.memory import MemoryKV
    return MemoryKV(max_bytes=c.max_bytes)
