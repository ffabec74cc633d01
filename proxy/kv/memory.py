"""In-process LRU bounded by bytes: the default cache store when no Redis is configured."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

_OVERHEAD = 96      # rough per-entry bookkeeping, so many tiny entries still count against the bound


class _Item:
    __slots__ = ("expires", "size", "tags", "value")

    def __init__(self, value: bytes, expires: float, tags: tuple[str, ...], size: int) -> None:
        self.value, self.expires, self.tags, self.size = value, expires, tags, size


class MemoryKV:
    """Least recently used entries go first once `max_bytes` is reached; expired ones are dropped on read."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._tags: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires <= time.monotonic():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item.value

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        size = len(value) + len(key) + _OVERHEAD
        if key in self._items:
            self._drop(key)
        if ttl <= 0 or size > self.max_bytes:
            return
        self._items[key] = _Item(value, time.monotonic() + ttl, tuple(tags), size)
        self.size += size
        for t in tags:
            self._tags.setdefault(t, set()).add(key)
        while self.size > self.max_bytes:
            self._drop(next(iter(self._items)))

    async def delete(self, key: str) -> int:
        return 1 if self._drop(key) else 0

    async def delete_tagged(self, tag: str) -> int:
        keys = list(self._tags.get(tag, ()))
        return sum(1 for k in keys if self._drop(k))

    async def close(self) -> None:
        self._items.clear()
        self._tags.clear()
        self.size = 0

    def _drop(self, key: str) -> bool:
        item = self._items.pop(key, None)
        if item is None:
            return False
        self.size -= item.size
        for t in item.tags:
            members = self._tags.get(t)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._tags[t]
        return True
