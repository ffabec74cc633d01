"""Stored responses in the ledger: one row per (tenant, response id), the JSON of what a continuation and
GET /v1/responses/{id} need, and when it expires (rows past it are never read and are purged in batches)."""

from __future__ import annotations

import time

from proxy.store import Ledger


async def put(ledger: Ledger, tenant: str, rid: str, body: str, ttl: float) -> None:
    now = time.time()
    await ledger.execute("DELETE FROM stored_responses WHERE tenant = ? AND id = ?", tenant, rid)
    await ledger.execute("INSERT INTO stored_responses (tenant, id, created_at, expires_at, body) "
                         "VALUES (?, ?, ?, ?, ?)", tenant, rid, now, now + ttl, body)


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
