"""Usage events in the ledger: the row, the batched writer (events and their hourly rollups in one
transaction), and the event list behind /v1/usage.

One row per request, keyed by request id (unique: a replayed write is ignored, so flushing twice or
retrying a batch never double-counts). Money is integer nano-dollars; `cost_nanos` NULL means unpriced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

import msgspec

from proxy.store import Ledger, rollups

log = logging.getLogger("proxy.usage")


class UsageEvent(msgspec.Struct, gc=False, array_like=True):
    """The seed's Usage Event Schema, flattened into columns, plus what operations need. The request
    path builds it with positional arguments (in field order): ~9x cheaper than 27 keywords."""

    request_id: str
    ts: float                                # unix seconds, when the call finished
    day: str                                 # UTC date of ts (YYYY-MM-DD), for per-day summaries
    source_type: str | None = None           # "application" | "service"
    source_id: str | None = None
    team: str | None = None
    request_type: str = "chat.completions"   # or "embeddings"
    model: str = ""                          # the model the client asked for
    provider: str | None = None              # the provider that answered (or the cached answer's)
    upstream_model: str | None = None
    key_id: str | None = None
    budget_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0                   # prompt tokens read from the provider's prompt cache
    cost_nanos: int | None = None            # None: unpriced
    saved_nanos: int = 0                     # a response-cache hit: what the call would have cost
    is_async: bool = False
    cached: bool = False                     # served from the response cache
    batch_id: str | None = None
    stream: bool = False
    status: int = 0
    error: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    estimated: bool = False                  # tokens counted by us, not reported by the provider
    custom_id: str | None = None             # a batch line's custom_id
    ingress: str | None = None               # the way in: rest, graphql, job, batch, websocket, ...
    id: int | None = None


COLS = tuple(f for f in UsageEvent.__struct_fields__ if f != "id")
_BOOLS = frozenset({"is_async", "cached", "stream", "estimated"})
SELECT_COLS = ("id", *COLS)


_BOOL_IDX = tuple(i for i, c in enumerate(COLS) if c in _BOOLS)
assert UsageEvent.__struct_fields__[-1] == "id"


def to_row(e: UsageEvent) -> tuple[Any, ...]:
    row = list(msgspec.structs.astuple(e)[:-1])
    for i in _BOOL_IDX:
        row[i] = 1 if row[i] else 0
    return tuple(row)


def from_row(row: tuple[Any, ...]) -> UsageEvent:
    d = dict(zip(SELECT_COLS, row, strict=True))
    for c in _BOOLS:
        d[c] = bool(d[c])
    for c in ("prompt_tokens", "completion_tokens", "cached_tokens", "saved_nanos"):
        d[c] = int(d[c] or 0)
    if d["cost_nanos"] is not None:
        d["cost_nanos"] = int(d["cost_nanos"])
    return UsageEvent(**d)


class UsageQuery(msgspec.Struct, kw_only=True):
    request_id: str | None = None
    key_id: str | None = None
    source_id: str | None = None
    model: str | None = None
    budget_id: str | None = None
    batch_id: str | None = None
    since: float | None = None
    until: float | None = None
    before_id: int | None = None             # cursor: newest first
    limit: int = 100


def _where(q: UsageQuery) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for col, op, value in (("request_id", "=", q.request_id), ("key_id", "=", q.key_id),
                           ("source_id", "=", q.source_id), ("model", "=", q.model),
                           ("budget_id", "=", q.budget_id), ("batch_id", "=", q.batch_id), ("ts", ">=", q.since),
                           ("ts", "<", q.until),
                           ("id", "<", q.before_id)):
        if value is not None:
            where.append(f"{col} {op} ?")
            args.append(float(value) if col == "ts" else value)
    return (" WHERE " + " AND ".join(where)) if where else "", args


async def list_usage(ledger: Ledger, q: UsageQuery) -> list[UsageEvent]:
    where, args = _where(q)
    sql = f"SELECT {', '.join(SELECT_COLS)} FROM usage_events{where} ORDER BY id DESC LIMIT ?"
    return [from_row(r) for r in await ledger.fetch(sql, *args, int(q.limit))]


async def spent_since(ledger: Ledger, budget_id: str, since: float, scope_col: str | None,
                      scope_value: str | None) -> int:
    """Summed cost of one budget's events since `since` (optionally one key/source/team): seeds counters."""
    sql = "SELECT COALESCE(SUM(cost_nanos), 0) FROM usage_events WHERE budget_id = ? AND ts >= ?"
    args: list[Any] = [budget_id, float(since)]
    if scope_col is not None:
        sql += f" AND {scope_col} = ?"
        args.append(scope_value)
    rows = await ledger.fetch(sql, *args)
    return int(rows[0][0] or 0)


CHUNKS = (256, 64, 16, 4, 1)   # rows per multi-row INSERT: every batch is made of these five statements


@functools.lru_cache(maxsize=len(CHUNKS))
def _multi_insert(rows: int) -> str:
    one = "(" + ", ".join("?" * len(COLS)) + ")"
    return (f"INSERT INTO usage_events ({', '.join(COLS)}) VALUES {', '.join([one] * rows)} "
            "ON CONFLICT (request_id) DO NOTHING RETURNING request_id")


_ROLLUP_IDX = tuple(COLS.index(c) for c in rollups.EVENT_COLS)


def chunks(n: int) -> list[int]:
    """`n` rows as fixed chunk sizes, largest first: 300 -> [256, 16, 16, 4, 4, 4]."""
    out: list[int] = []
    for size in CHUNKS:
        q, n = divmod(n, size)
        out += [size] * q
    return out


async def write_events(ledger: Ledger, batch: list[UsageEvent]) -> None:
    """One transaction: the batch in fixed-size multi-row INSERTs, then what the inserted events add to
    the hourly rollups. A replayed request id is skipped by the INSERT, and RETURNING names only the rows
    it did insert, so a retry after a failed write never double-counts an event or its rollup."""
    rows = [to_row(e) for e in batch]
    inserted: set[str] = set()
    async with ledger.atomic() as tx:
        # Multi-row INSERTs: parameters are bound once per statement, so (on SQLite) the ledger's worker
        # thread takes the GIL once per chunk rather than once per row. Only the few CHUNKS sizes are ever
        # prepared: one statement per batch size made SQLite's statement cache (128 per connection, up to
        # 1,000 rows each) grow the writer process from 34 to 145 MB and on.
        i = 0
        for size in chunks(len(rows)):
            flat = [v for r in rows[i:i + size] for v in r]
            inserted.update(r[0] for r in await tx.fetch(_multi_insert(size), *flat))
            i += size
        if len(inserted) == len(rows):
            fresh = rows
        else:
            fresh = []
            for r in rows:                     # a request id twice in one batch counts once
                if r[0] in inserted:
                    inserted.discard(r[0])
                    fresh.append(r)
        await rollups.add(tx, (tuple(r[i] for i in _ROLLUP_IDX) for r in fresh))


MAX_BATCH = 1000                                # SQLite: at most 32766 bound parameters per statement


class UsageWriter:
    """Bounded in-memory queue -> one multi-row insert every `interval` seconds or `batch` events.

    `add` never awaits. A failed write keeps the events and retries (with a growing pause), so a ledger
    outage loses nothing until `max_queue` overflows (then the oldest are dropped and counted).
    """

    def __init__(self, ledger: Ledger, *, interval: float = 0.2, batch: int = 500,   # 500 x 27 params < 32766
                 max_queue: int = 100_000) -> None:
        self.ledger, self.interval, self.max_queue = ledger, interval, max_queue
        self.batch = max(1, min(batch, MAX_BATCH))
        self._queue: list[UsageEvent] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0
        self.failures = 0

    def add(self, event: UsageEvent) -> None:
        q = self._queue
        if len(q) >= self.max_queue:
            q.pop(0)
            self.dropped += 1
        q.append(event)
        if len(q) >= self.batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self, within: float | None = None) -> None:
        """Write everything queued now. Raises if the ledger refuses or `within` seconds pass (the events
        stay queued)."""
        if within is not None:
            await asyncio.wait_for(self.flush(), within)
            return
        async with self._lock:
            # Only what is queued now: events arriving meanwhile wait for the next tick, so a steady
            # trickle becomes one transaction per tick instead of a busy loop of one-row commits.
            left = len(self._queue)
            while left > 0 and self._queue:
                batch = self._queue[: min(self.batch, left)]
                await self._write(batch)
                del self._queue[: len(batch)]
                self.written += len(batch)
                left -= len(batch)

    async def _write(self, batch: list[UsageEvent]) -> None:
        await write_events(self.ledger, batch)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def _run(self) -> None:
        pause = self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()
            try:
                await self.flush()
                pause = self.interval
            except Exception as e:
                self.failures += 1
                pause = min(5.0, pause * 2)
                log.error("usage write failed (%d events waiting, retry in %.1fs): %s", self.pending, pause,
                          type(e).__name__)

    async def close(self) -> None:
        """Stop the loop, then write what is left (graceful shutdown loses no event)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for attempt in range(3):
            try:
                while self._queue:
                    await self.flush()
                return
            except Exception as e:
                log.error("usage flush at shutdown failed (try %d, %d events): %s", attempt + 1, self.pending,
                          type(e).__name__)
                await asyncio.sleep(0.2)
