"""Stored responses in the ledger: one row per (tenant, response id), the JSON of what a continuation and
GET /v1/responses/{id} need, and when it expires (rows past it are never read and are purged in batches)."""

from __future__ import annotations

import time

from proxy.store import Ledger

CHUNK = 200        # rows per statement: 1,000 parameters, well under SQLite's and PostgreSQL's limits
_UPSERT = ("INSERT INTO stored_responses (tenant, id, created_at, expires_at, body) VALUES {} "
           "ON CONFLICT (tenant, id) DO UPDATE SET created_at = excluded.created_at, "
           "expires_at = excluded.expires_at, body = excluded.body")


async def put_many(ledger: Ledger, rows: list[tuple[str, str, str]], ttl: float) -> None:
    """(tenant, id, body) rows; an id stored again is replaced. One multi-row statement (atomic on its own)
    per CHUNK rows: one round trip to the database, where executemany's transaction takes three (BEGIN,
    the rows, COMMIT; on SQLite a thread hop and a loop wake-up each)."""
    now = time.time()
    latest = {(t, r): body for t, r, body in rows}   # one statement must not touch a row twice (PostgreSQL)
    items = list(latest.items())
    for i in range(0, len(items), CHUNK):
        part = items[i:i + CHUNK]
        await ledger.execute(_UPSERT.format(", ".join(["(?, ?, ?, ?, ?)"] * len(part))),
                             *[x for (t, r), body in part for x in (t, r, now, now + ttl, body)])


async def get(ledger: Ledger, tenant: str, rid: str) -> str | None:
    rows = await ledger.fetch("SELECT body FROM stored_responses WHERE tenant = ? AND id = ? AND expires_at > ?",
                              tenant, rid, time.time())
    return str(rows[0][0]) if rows else None


async def delete(ledger: Ledger, tenant: str, rid: str) -> bool:
    found = await ledger.fetch("SELECT 1 FROM stored_responses WHERE tenant = ? AND id = ? AND expires_at > ?",
                               tenant, rid, time.time())
    await ledger.execute("DELETE FROM stored_responses WHERE tenant = ? AND id = ?", tenant, rid)
    return bool(found)


async def purge(ledger: Ledger) -> None:
    await ledger.execute("DELETE FROM stored_responses WHERE expires_at <= ?", time.time())
