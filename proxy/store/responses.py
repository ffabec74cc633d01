"""Stored responses in the ledger: one row per (tenant, response id), the JSON of what a continuation and
GET /v1/responses/{id} need, and when it expires (rows past it are never read and are purged in batches)."""

from __future__ import annotations

import time

from proxy.store import Ledger


async def put_many(ledger: Ledger, rows: list[tuple[str, str, str]], ttl: float) -> None:
    """(tenant, id, body) rows in one transaction; an id stored again is replaced."""
    now = time.time()
    await ledger.executemany(
        "INSERT INTO stored_responses (tenant, id, created_at, expires_at, body) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (tenant, id) DO UPDATE SET created_at = excluded.created_at, "
        "expires_at = excluded.expires_at, body = excluded.body",
        [(tenant, rid, now, now + ttl, body) for tenant, rid, body in rows])


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
