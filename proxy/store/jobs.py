"""Async jobs and their webhook deliveries in the ledger.

Workers claim rows with a lease (`lease_owner`, `lease_until`) in one `UPDATE ... RETURNING`; on PostgreSQL
the candidate rows are picked `FOR UPDATE SKIP LOCKED`, so replicas never claim the same row. A worker
that dies leaves a lease that expires, and the row is claimed again.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import orjson

from proxy.store import Ledger

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "queued", "in_progress", "completed", "failed", "cancelled"
ENDED = (COMPLETED, FAILED, CANCELLED)


def skip_locked(ledger: Ledger) -> str:
    return " FOR UPDATE SKIP LOCKED" if ledger.dialect == "postgresql" else ""


class Job(msgspec.Struct, kw_only=True):
    id: str
    key_id: str
    endpoint: str
    body: dict[str, Any]
    headers: dict[str, str] = {}
    idem_key: str | None = None
    idem_hash: str | None = None
    webhook_url: str | None = None
    status: str = QUEUED
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    http_status: int | None = None
    result: Any = None               # the answer's JSON, as the synchronous call would have given it
    error: Any = None                # the error envelope's `error` object

    def public(self) -> dict[str, Any]:
        """The job object clients see."""
        return {"id": self.id, "object": "job", "status": self.status, "created_at": int(self.created_at),
                "started_at": _int(self.started_at), "completed_at": _int(self.completed_at),
                "result": self.result, "error": self.error}


def _int(v: float | None) -> int | None:
    return int(v) if v is not None else None


COLS = ("id", "key_id", "endpoint", "body", "headers", "idem_key", "idem_hash", "webhook_url", "status",
        "created_at", "started_at", "completed_at", "expires_at", "http_status", "result", "error")
_SELECT = f"SELECT {', '.join(COLS)} FROM jobs"


def _row(r: tuple[Any, ...]) -> Job:
    d = dict(zip(COLS, r, strict=True))
    for c in ("body", "headers", "result", "error"):
        d[c] = orjson.loads(d[c]) if d[c] is not None else ({} if c in ("body", "headers") else None)
    return Job(**d)


def _db(c: str, v: Any) -> Any:
    if c in ("body", "headers", "result", "error"):
        return orjson.dumps(v).decode() if v is not None else None
    return v


async def insert(ledger: Ledger, job: Job) -> Job:
    """Insert, or return the job an earlier submission with the same Idempotency-Key made."""
    if job.idem_key is not None:
        same = await ledger.fetch(f"{_SELECT} WHERE key_id = ? AND idem_key = ?", job.key_id, job.idem_key)
        if same:
            return _row(same[0])
    sql = (f"INSERT INTO jobs ({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))}) "
           "ON CONFLICT (key_id, idem_key) DO NOTHING")
    await ledger.execute(sql, *(_db(c, getattr(job, c)) for c in COLS))
    if job.idem_key is not None:             # a concurrent twin may have won the insert
        same = await ledger.fetch(f"{_SELECT} WHERE key_id = ? AND idem_key = ?", job.key_id, job.idem_key)
        return _row(same[0])
    return job


async def get(ledger: Ledger, job_id: str) -> Job | None:
    rows = await ledger.fetch(f"{_SELECT} WHERE id = ?", job_id)
    return _row(rows[0]) if rows else None


async def claim(ledger: Ledger, owner: str, n: int, lease: float) -> list[Job]:
    now = time.time()
    # A read first: an idle gateway polls without taking the database's write lock.
    if not await ledger.fetch(f"SELECT 1 FROM jobs WHERE status = '{QUEUED}' OR (status = '{IN_PROGRESS}' AND "
                              "lease_until < ?) LIMIT 1", now):
        return []
    sql = (f"UPDATE jobs SET status = '{IN_PROGRESS}', started_at = COALESCE(started_at, ?), lease_owner = ?, "
           f"lease_until = ? WHERE id IN (SELECT id FROM jobs WHERE status = '{QUEUED}' OR (status = "
           f"'{IN_PROGRESS}' AND lease_until < ?) ORDER BY created_at LIMIT ?{skip_locked(ledger)}) "
           f"RETURNING {', '.join(COLS)}")
    return [_row(r) for r in await ledger.fetch_write(sql, now, owner, now + lease, now, int(n))]


async def renew(ledger: Ledger, owner: str, ids: list[str], lease: float) -> set[str]:
    """Extend the leases still ours; returns the ids that are not (cancelled, or taken over)."""
    if not ids:
        return set()
    marks = ", ".join("?" * len(ids))
    kept = await ledger.fetch_write(
        f"UPDATE jobs SET lease_until = ? WHERE id IN ({marks}) AND lease_owner = ? AND status = '{IN_PROGRESS}' "
        "RETURNING id", time.time() + lease, *ids, owner)
    return set(ids) - {r[0] for r in kept}


async def finish(ledger: Ledger, owner: str, job_id: str, status: str, http_status: int, result: Any,
                 error: Any, ttl: float) -> Job | None:
    """Store the outcome, if the job is still ours and running (a cancel wins). None: it was not."""
    now = time.time()
    rows = await ledger.fetch_write(
        f"UPDATE jobs SET status = ?, completed_at = ?, expires_at = ?, http_status = ?, result = ?, error = ?, "
        f"lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ? AND status = '{IN_PROGRESS}' "
        f"RETURNING {', '.join(COLS)}",
        status, now, now + ttl, http_status, _db("result", result), _db("error", error), job_id, owner)
    return _row(rows[0]) if rows else None


async def release(ledger: Ledger, owner: str, ids: list[str]) -> None:
    """Give claimed jobs back (shutdown): another worker takes them at once."""
    if ids:
        await ledger.execute(f"UPDATE jobs SET status = '{QUEUED}', lease_owner = NULL, lease_until = NULL "
                             f"WHERE id IN ({', '.join('?' * len(ids))}) AND lease_owner = ? AND status = "
                             f"'{IN_PROGRESS}'", *ids, owner)


async def cancel(ledger: Ledger, job_id: str, ttl: float) -> Job | None:
    now = time.time()
    await ledger.execute(f"UPDATE jobs SET status = '{CANCELLED}', completed_at = ?, expires_at = ?, "
                         "lease_owner = NULL, lease_until = NULL, error = ? WHERE id = ? AND status IN "
                         f"('{QUEUED}', '{IN_PROGRESS}')", now, now + ttl,
                         _db("error", {"message": "The job was cancelled.", "type": "invalid_request_error",
                                       "param": None, "code": "job_cancelled"}), job_id)
    return await get(ledger, job_id)


async def purge(ledger: Ledger) -> None:
    """Finished jobs past their result TTL are forgotten (and their deliveries with them)."""
    now = time.time()
    await ledger.execute("DELETE FROM webhook_deliveries WHERE job_id IN (SELECT id FROM jobs WHERE "
                         "expires_at < ?) AND status != 'failed'", now)
    await ledger.execute("DELETE FROM jobs WHERE expires_at < ?", now)


# -- webhook deliveries ---------------------------------------------------------------------------------

class Delivery(msgspec.Struct, kw_only=True):
    id: str                          # the webhook-id: the same on every attempt
    job_id: str
    url: str
    payload: str
    status: str = "pending"          # pending | delivered | failed
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


D_COLS = tuple(Delivery.__struct_fields__)


async def add_delivery(ledger: Ledger, d: Delivery) -> None:
    await ledger.execute(f"INSERT INTO webhook_deliveries ({', '.join(D_COLS)}) VALUES "
                         f"({', '.join('?' * len(D_COLS))}) ON CONFLICT (id) DO NOTHING",
                         *(getattr(d, c) for c in D_COLS))


async def claim_deliveries(ledger: Ledger, n: int, lease: float) -> list[Delivery]:
    now = time.time()
    if not await ledger.fetch("SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_at <= ? LIMIT 1",
                              now):
        return []
    sql = (f"UPDATE webhook_deliveries SET lease_until = ? WHERE id IN (SELECT id FROM webhook_deliveries WHERE "
           "status = 'pending' AND next_at <= ? AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_at "
           f"LIMIT ?{skip_locked(ledger)}) RETURNING {', '.join(D_COLS)}")
    return [Delivery(**dict(zip(D_COLS, r, strict=True))) for r in
            await ledger.fetch_write(sql, now + lease, now, now, int(n))]


async def delivery_tried(ledger: Ledger, d: Delivery) -> None:
    await ledger.execute("UPDATE webhook_deliveries SET status = ?, attempts = ?, next_at = ?, last_error = ?, "
                         "lease_until = NULL, updated_at = ? WHERE id = ?", d.status, d.attempts, d.next_at,
                         d.last_error, time.time(), d.id)


async def failed_deliveries(ledger: Ledger, limit: int) -> list[Delivery]:
    rows = await ledger.fetch(f"SELECT {', '.join(D_COLS)} FROM webhook_deliveries WHERE status = 'failed' "
                              "ORDER BY updated_at DESC LIMIT ?", int(limit))
    return [Delivery(**dict(zip(D_COLS, r, strict=True))) for r in rows]
