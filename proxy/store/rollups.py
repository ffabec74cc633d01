"""Hourly usage rollups: what the usage writer adds per batch, the backfill, and the summary read.

A dashboard over 30 days must not scan a million raw events (Bifrost's 80 s), and per-UTC-day tables are
wrong for anyone outside UTC (LiteLLM). So every event also adds to one row per UTC hour x key x source x
model x provider x budget, in the same transaction as the event itself, and summaries sum those rows:
days in any time zone are unions of hours. An hour belongs to a range when it *starts* inside it, so each
hour lands in exactly one local day and single days always add up to the multi-day total; for zones whose
offset is not whole hours (India, Nepal, parts of Australia) a day's edges are off by that fraction.

Two narrower tables hold the same sums by hour x model x provider and hour x key x source x budget: most
questions (the overview's series, its splits) need only one side, and read a few thousand rows instead of
the full table's hundred thousand. All three are written in the same transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import msgspec

from proxy.store import Ledger, Tx

HOUR = 3600
DIMS = ("hour", "key_id", "source_id", "model", "provider", "budget_id")
# Upper bounds (ms, inclusive) of the latency histogram's buckets; the last bucket is "above the last bound".
LATENCY_BOUNDS_MS = (100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)
BUCKETS = tuple(f"lat_b{i}" for i in range(len(LATENCY_BOUNDS_MS) + 1))
MEASURES = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos",
            "saved_nanos", "cache_hits", "unpriced", "estimated", "latency_ms_sum", *BUCKETS)
COLS = (*DIMS, *MEASURES)


class Table(msgspec.Struct, frozen=True):
    name: str
    dims: tuple[str, ...]                     # after `hour`

    @property
    def cols(self) -> tuple[str, ...]:
        return ("hour", *self.dims, *MEASURES)

    @property
    def upsert(self) -> str:
        return (f"INSERT INTO {self.name} ({', '.join(self.cols)}) VALUES ({', '.join('?' * len(self.cols))}) "
                f"ON CONFLICT (hour, {', '.join(self.dims)}) DO UPDATE SET "
                + ", ".join(f"{m} = {self.name}.{m} + excluded.{m}" for m in MEASURES))


FULL = Table("usage_rollups", DIMS[1:])
NARROW = (Table("usage_rollups_model", ("model", "provider")),
          Table("usage_rollups_key", ("key_id", "source_id", "budget_id")))
TABLES = (FULL, *NARROW)
_UPSERTS = {t.name: t.upsert for t in TABLES}

# The event columns a rollup reads, in this order (see `add_rows`).
EVENT_COLS = ("ts", "key_id", "source_id", "model", "provider", "budget_id", "prompt_tokens",
              "completion_tokens", "cached_tokens", "cost_nanos", "saved_nanos", "cached", "status",
              "latency_ms", "estimated")


def bucket_of(latency_ms: float) -> int:
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if latency_ms <= bound:
            return i
    return len(LATENCY_BOUNDS_MS)


def add_rows(events: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Event tuples (EVENT_COLS order) -> one upsert row per distinct hour and dimensions."""
    acc: dict[tuple[Any, ...], list[Any]] = {}
    n_measures = len(MEASURES)
    first_bucket = MEASURES.index(BUCKETS[0])
    for (ts, key, source, model, provider, budget, pt, ct, cached_t, cost, saved, cached, status, lat,
         estimated) in events:
        dims = (int(ts // HOUR) * HOUR, key or "", source or "", model or "", provider or "", budget or "")
        m = acc.get(dims)
        if m is None:
            m = acc[dims] = [0] * n_measures
            m[10] = 0.0
        m[0] += 1
        m[1] += 1 if status >= 400 else 0
        m[2] += pt
        m[3] += ct
        m[4] += cached_t
        m[5] += cost or 0
        m[6] += saved
        m[7] += 1 if cached else 0
        m[8] += 1 if cost is None else 0
        m[9] += 1 if estimated else 0
        m[10] += float(lat)
        m[first_bucket + bucket_of(lat)] += 1
    return [(*dims, *m) for dims, m in acc.items()]


def project(rows: list[tuple[Any, ...]], table: Table) -> list[tuple[Any, ...]]:
    """Full-dimension rollup rows -> the same sums by hour and `table.dims`."""
    idx = [DIMS.index(d) for d in table.dims]
    n = len(DIMS)
    acc: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows:
        k = (r[0], *(r[i] for i in idx))
        m = acc.get(k)
        if m is None:
            acc[k] = list(r[n:])
        else:
            for j, v in enumerate(r[n:]):
                m[j] += v
    return [(*k, *m) for k, m in acc.items()]


async def add(tx: Tx, events: Iterable[tuple[Any, ...]]) -> None:
    rows = add_rows(events)
    if rows:
        await tx.executemany(_UPSERTS[FULL.name], rows)
        for t in NARROW:
            await tx.executemany(_UPSERTS[t.name], project(rows, t))


def _hour_expr(dialect: str) -> str:
    if dialect == "postgresql":
        return "(FLOOR(ts / 3600)::BIGINT * 3600)"
    return "(CAST(ts / 3600 AS INTEGER) * 3600)"


def _backfill_select(dialect: str) -> str:
    cases, low = [], None
    for bound in LATENCY_BOUNDS_MS:
        cond = f"latency_ms <= {bound}" if low is None else f"latency_ms > {low} AND latency_ms <= {bound}"
        cases.append(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)")
        low = bound
    cases.append(f"SUM(CASE WHEN latency_ms > {low} THEN 1 ELSE 0 END)")
    dims = ", ".join(f"COALESCE({d}, '')" for d in DIMS[1:])
    return (f"SELECT {_hour_expr(dialect)} AS h, {dims}, COUNT(*), "
            "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(prompt_tokens), SUM(completion_tokens), "
            "SUM(cached_tokens), COALESCE(SUM(cost_nanos), 0), SUM(saved_nanos), "
            "SUM(CASE WHEN cached = 1 THEN 1 ELSE 0 END), SUM(CASE WHEN cost_nanos IS NULL THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN estimated = 1 THEN 1 ELSE 0 END), SUM(latency_ms), " + ", ".join(cases)
            + " FROM usage_events WHERE ts >= ? GROUP BY h, " + ", ".join(str(i) for i in range(2, len(DIMS) + 1)))


async def backfill(ledger: Ledger, since: float | None = None) -> int:
    """Rebuild the rollups of every hour from `since` (default: all) from the raw events, in one
    transaction. Returns the rollup rows written. Safe while the gateway writes: on PostgreSQL the
    rollup table is locked first, so a concurrent batch adds to the rebuilt rows after this commits."""
    start = 0 if since is None else int(since // HOUR) * HOUR
    sums = ", ".join(f"SUM({m})" for m in MEASURES)
    async with ledger.atomic() as tx:
        if ledger.dialect == "postgresql":
            await tx.execute(f"LOCK TABLE {', '.join(t.name for t in TABLES)} IN EXCLUSIVE MODE")
        for t in TABLES:
            await tx.execute(f"DELETE FROM {t.name} WHERE hour >= ?", start)
        await tx.execute(f"INSERT INTO usage_rollups ({', '.join(COLS)}) {_backfill_select(ledger.dialect)}",
                         float(start))
        for t in NARROW:                       # the narrow tables: sums of the full one
            dims = ", ".join(t.dims)
            await tx.execute(f"INSERT INTO {t.name} ({', '.join(t.cols)}) SELECT hour, {dims}, {sums} "
                             f"FROM usage_rollups WHERE hour >= ? GROUP BY hour, {dims}", start)
        rows = await tx.fetch("SELECT COUNT(*) FROM usage_rollups WHERE hour >= ?", start)
    return int(rows[0][0])


# -- reading -----------------------------------------------------------------------------------------------

class RollupQuery(msgspec.Struct, kw_only=True):
    """Hours whose start lies in [since, until); dimension filters are exact ('' matches "none")."""

    since: float | None = None
    until: float | None = None
    key_id: str | None = None
    source_id: str | None = None
    model: str | None = None
    provider: str | None = None
    budget_id: str | None = None


class Totals(msgspec.Struct, kw_only=True):
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nanos: int = 0
    saved_nanos: int = 0
    cache_hits: int = 0
    unpriced: int = 0
    estimated: int = 0
    latency_ms_sum: float = 0.0
    latency_buckets: list[int] = msgspec.field(default_factory=lambda: [0] * len(BUCKETS))

    def add(self, other: Totals) -> None:
        for f in MEASURES[:11]:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.latency_buckets = [a + b for a, b in zip(self.latency_buckets, other.latency_buckets, strict=True)]


GROUP_COLS = {"model": "model", "source": "source_id", "key": "key_id", "budget": "budget_id",
              "provider": "provider", "hour": "hour", "day": "hour", "total": None}


@functools.lru_cache(maxsize=64)
def _select(table: str, group_col: str | None, where: str, histogram: bool) -> str:
    sums = ", ".join(f"SUM({m})" for m in (MEASURES if histogram else MEASURES[:11]))
    if group_col is None:
        return f"SELECT '', {sums} FROM {table}{where}"
    return f"SELECT {group_col}, {sums} FROM {table}{where} GROUP BY {group_col} ORDER BY {group_col}"


def table_for(q: RollupQuery, group_col: str | None) -> Table:
    """The narrowest table holding every dimension the question filters or groups by."""
    need = {c for c, v in (("key_id", q.key_id), ("source_id", q.source_id), ("model", q.model),
                           ("provider", q.provider), ("budget_id", q.budget_id)) if v is not None}
    if group_col not in (None, "hour"):
        need.add(group_col)
    for t in NARROW:
        if need <= set(t.dims):
            return t
    return FULL


def _where(q: RollupQuery) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for col, op, value in (("hour", ">=", q.since), ("hour", "<", q.until), ("key_id", "=", q.key_id),
                           ("source_id", "=", q.source_id), ("model", "=", q.model),
                           ("provider", "=", q.provider), ("budget_id", "=", q.budget_id)):
        if value is None:
            continue
        if col == "hour":
            # "starts at or after since" == hour >= ceil(since to the hour), on integers the index reads
            value = -int(-float(value) // HOUR) * HOUR
        where.append(f"{col} {op} ?")
        args.append(value)
    return (" WHERE " + " AND ".join(where)) if where else "", args


def _totals(r: tuple[Any, ...]) -> Totals:
    v = [0 if x is None else x for x in r]
    ints = [int(x) for x in v[:10]]
    return Totals(requests=ints[0], errors=ints[1], prompt_tokens=ints[2], completion_tokens=ints[3],
                  cached_tokens=ints[4], cost_nanos=ints[5], saved_nanos=ints[6], cache_hits=ints[7],
                  unpriced=ints[8], estimated=ints[9], latency_ms_sum=float(v[10]),
                  latency_buckets=[int(x) for x in v[11:]] or [0] * len(BUCKETS))


EVENT_FILTERS = ("request_id", "batch_id")      # indexed event columns a summary may narrow to


def _ceil_hour(t: float | None) -> int | None:
    return None if t is None else -int(-float(t) // HOUR) * HOUR


async def read_events(ledger: Ledger, q: RollupQuery, group_by: str, column: str, value: str,
                      histogram: bool = True) -> list[tuple[Any, Totals]]:
    """The same sums for the events of one request or one batch (an indexed read of that column's rows,
    added up here with the rollups' own arithmetic), for the questions the rollups cannot answer."""
    assert column in EVENT_FILTERS
    rows = add_rows(await ledger.fetch(f"SELECT {', '.join(EVENT_COLS)} FROM usage_events WHERE {column} = ?",
                                       value))
    lo, hi = _ceil_hour(q.since), _ceil_hour(q.until)
    want = [(DIMS.index(c), v) for c, v in (("key_id", q.key_id), ("source_id", q.source_id), ("model", q.model),
                                            ("provider", q.provider), ("budget_id", q.budget_id)) if v is not None]
    col = GROUP_COLS[group_by]
    gi = None if col is None else DIMS.index(col)
    acc: dict[Any, Totals] = {}
    for r in rows:
        if (lo is not None and r[0] < lo) or (hi is not None and r[0] >= hi) or any(r[i] != v for i, v in want):
            continue
        t = _totals(r[len(DIMS):])
        if not histogram:
            t.latency_buckets = [0] * len(BUCKETS)
        g = "" if gi is None else r[gi]
        have = acc.get(g)
        if have is None:
            acc[g] = t
        else:
            have.add(t)
    return [(g if col == "hour" else (g or None), t) for g, t in sorted(acc.items(), key=lambda kv: kv[0])]


async def read(ledger: Ledger, q: RollupQuery, group_by: str, histogram: bool = True) -> list[tuple[Any, Totals]]:
    """(group value, totals) per group; `hour`/`day` group by the UTC hour (epoch seconds) and leave the
    local labelling to the caller. Dimension values '' come back as None. Without `histogram` the latency
    buckets are not summed (half the work; they read as zeros)."""
    col = GROUP_COLS[group_by]
    where, args = _where(q)
    out = []
    for r in await ledger.fetch(_select(table_for(q, col).name, col, where, histogram), *args):
        if col is None and not r[1]:
            continue
        g = int(r[0]) if col == "hour" else (r[0] or None)
        out.append((g, _totals(r[1:])))
    return out
