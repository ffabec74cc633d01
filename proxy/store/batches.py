"""Files, batches and batch lines in the ledger.

A batch is stored as its OpenAI object (`doc`, JSON) plus the columns workers select on. Each input line
is a row keyed by `(batch_id, custom_id)`; a worker claims lines with a lease, and a line is settled once:
`UPDATE ... WHERE state != 'done'`, so a line run twice (its worker died after the call) keeps its first
output. Its usage event is keyed by a request id derived from the line, so it is written once too.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import orjson

from proxy.store import Ledger
from proxy.store.jobs import skip_locked

PENDING, LEASED, DONE, SKIPPED = "pending", "leased", "done", "skipped"
# batch statuses (OpenAI's)
VALIDATING, IN_PROGRESS, FINALIZING, COMPLETED, FAILED, EXPIRED, CANCELLING, CANCELLED = (
    "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
BUSY = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)   # a worker has something to do


class FileRow(msgspec.Struct, kw_only=True):
    id: str
    key_id: str
    filename: str
    purpose: str
    bytes: int
    created_at: float

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at),
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


F_COLS = ("id", "key_id", "filename", "purpose", "bytes", "created_at")


def _after(table: str, op: str) -> str:
    """The cursor: rows after the one with id ? in (created_at, id) order (three `?`: the same id)."""
    return (f"(created_at {op} (SELECT created_at FROM {table} WHERE id = ?) OR (created_at = "
            f"(SELECT created_at FROM {table} WHERE id = ?) AND id {op} ?))")


async def add_file(ledger: Ledger, f: FileRow, content: str) -> None:
    await ledger.execute(f"INSERT INTO files ({', '.join(F_COLS)}, content) VALUES ({', '.join('?' * 7)})",
                         *(getattr(f, c) for c in F_COLS), content)


async def get_file(ledger: Ledger, file_id: str) -> FileRow | None:
    rows = await ledger.fetch(f"SELECT {', '.join(F_COLS)} FROM files WHERE id = ?", file_id)
    return FileRow(**dict(zip(F_COLS, rows[0], strict=True))) if rows else None


async def file_content(ledger: Ledger, file_id: str) -> str | None:
    rows = await ledger.fetch("SELECT content FROM files WHERE id = ?", file_id)
    return rows[0][0] if rows else None


async def list_files(ledger: Ledger, key_id: str | None, purpose: str | None, after: str | None,
                     limit: int, order: str) -> list[FileRow]:
    where, args = [], []
    for col, op, v in (("key_id", "=", key_id), ("purpose", "=", purpose)):
        if v is not None:
            where.append(f"{col} {op} ?")
            args.append(v)
    if after is not None:
        where.append(_after("files", "<" if order == "desc" else ">"))
        args += [after, after, after]
    d = "DESC" if order == "desc" else "ASC"
    sql = (f"SELECT {', '.join(F_COLS)} FROM files" + (f" WHERE {' AND '.join(where)}" if where else "")
           + f" ORDER BY created_at {d}, id {d} LIMIT ?")
    return [FileRow(**dict(zip(F_COLS, r, strict=True))) for r in await ledger.fetch(sql, *args, int(limit))]


async def delete_file(ledger: Ledger, file_id: str) -> None:
    await ledger.execute("DELETE FROM files WHERE id = ?", file_id)


# -- batches ------------------------------------------------------------------------------------------

async def add_batch(ledger: Ledger, doc: dict[str, Any], key_id: str) -> None:
    await ledger.execute("INSERT INTO batches (id, key_id, doc, status, created_at) VALUES (?, ?, ?, ?, ?)",
                         doc["id"], key_id, orjson.dumps(doc).decode(), doc["status"], float(doc["created_at"]))


async def get_batch(ledger: Ledger, batch_id: str) -> tuple[str, dict[str, Any]] | None:
    """(key_id, the batch object)."""
    rows = await ledger.fetch("SELECT key_id, doc FROM batches WHERE id = ?", batch_id)
    return (rows[0][0], orjson.loads(rows[0][1])) if rows else None


async def list_batches(ledger: Ledger, key_id: str | None, after: str | None, limit: int) -> list[dict[str, Any]]:
    where, args = [], []
    if key_id is not None:
        where.append("key_id = ?")
        args.append(key_id)
    if after is not None:
        where.append(_after("batches", "<"))
        args += [after, after, after]
    sql = ("SELECT doc FROM batches" + (f" WHERE {' AND '.join(where)}" if where else "")
           + " ORDER BY created_at DESC, id DESC LIMIT ?")
    return [orjson.loads(r[0]) for r in await ledger.fetch(sql, *args, int(limit))]


async def save_batch(ledger: Ledger, doc: dict[str, Any], *, expect: str | None = None) -> bool:
    """Write the object back; with `expect`, only if the stored status is still that one."""
    sql = "UPDATE batches SET doc = ?, status = ? WHERE id = ?"
    args: list[Any] = [orjson.dumps(doc).decode(), doc["status"], doc["id"]]
    if expect is not None:
        sql += " AND status = ?"
        args.append(expect)
    rows = await ledger.fetch_write(sql + " RETURNING id", *args)
    return bool(rows)


async def claim_batch(ledger: Ledger, owner: str, lease: float) -> tuple[str, dict[str, Any]] | None:
    """A batch with work for its driver (validate, finalize, cancel, progress), leased to one worker."""
    now = time.time()
    marks = ", ".join(f"'{s}'" for s in BUSY)
    if not await ledger.fetch(f"SELECT 1 FROM batches WHERE status IN ({marks}) AND (lease_until IS NULL OR "
                              "lease_until < ?) LIMIT 1", now):
        return None                          # a read first: idle polls take no write lock
    rows = await ledger.fetch_write(
        f"UPDATE batches SET lease_owner = ?, lease_until = ? WHERE id IN (SELECT id FROM batches WHERE status "
        f"IN ({marks}) AND (lease_until IS NULL OR lease_until < ?) ORDER BY lease_until, created_at LIMIT 1"
        f"{skip_locked(ledger)}) RETURNING key_id, doc", owner, now + lease, now)
    return (rows[0][0], orjson.loads(rows[0][1])) if rows else None


async def unlease_batch(ledger: Ledger, batch_id: str, owner: str, after: float) -> None:
    """Done with it for now: look again in `after` seconds."""
    await ledger.execute("UPDATE batches SET lease_until = ? WHERE id = ? AND lease_owner = ?",
                         time.time() + after, batch_id, owner)


async def pause_batch(ledger: Ledger, batch_id: str, until: float) -> None:
    await ledger.execute("UPDATE batches SET next_at = ? WHERE id = ?", until, batch_id)


# -- lines ----------------------------------------------------------------------------------------------

class Line(msgspec.Struct, kw_only=True):
    batch_id: str
    custom_id: str
    line_no: int
    body: dict[str, Any]


async def add_lines(ledger: Ledger, rows: list[tuple[str, str, int, int, str]]) -> None:
    """(batch_id, custom_id, line_no, priority, body JSON); a replay (a driver that died) is ignored."""
    for i in range(0, len(rows), 500):
        await ledger.executemany("INSERT INTO batch_lines (batch_id, custom_id, line_no, priority, body, state) "
                                 f"VALUES (?, ?, ?, ?, ?, '{PENDING}') ON CONFLICT (batch_id, custom_id) DO NOTHING",
                                 rows[i:i + 500])


async def claim_lines(ledger: Ledger, owner: str, n: int, lease: float) -> list[Line]:
    now = time.time()
    if not await ledger.fetch(f"SELECT 1 FROM batches WHERE status = '{IN_PROGRESS}' AND next_at <= ? LIMIT 1", now):
        return []
    sql = (f"UPDATE batch_lines SET state = '{LEASED}', lease_owner = ?, lease_until = ? WHERE (batch_id, custom_id) "
           f"IN (SELECT batch_id, custom_id FROM batch_lines WHERE batch_id IN (SELECT id FROM batches WHERE status "
           f"= '{IN_PROGRESS}' AND next_at <= ?) AND ((state = '{PENDING}' AND not_before <= ?) OR (state = "
           f"'{LEASED}' AND lease_until < ?)) ORDER BY priority DESC, line_no LIMIT ?{skip_locked(ledger)}) "
           "RETURNING batch_id, custom_id, line_no, body")
    return [Line(batch_id=r[0], custom_id=r[1], line_no=int(r[2]), body=orjson.loads(r[3]))
            for r in await ledger.fetch_write(sql, owner, now + lease, now, now, now, int(n))]


async def renew_lines(ledger: Ledger, owner: str, keys: list[tuple[str, str]], lease: float) -> None:
    if keys:
        await ledger.executemany(f"UPDATE batch_lines SET lease_until = ? WHERE batch_id = ? AND custom_id = ? "
                                 f"AND lease_owner = ? AND state = '{LEASED}'",
                                 [(time.time() + lease, b, c, owner) for b, c in keys])


async def release_lines(ledger: Ledger, owner: str, keys: list[tuple[str, str]], not_before: float = 0.0) -> None:
    if keys:
        await ledger.executemany(f"UPDATE batch_lines SET state = '{PENDING}', lease_owner = NULL, lease_until = "
                                 f"NULL, not_before = ? WHERE batch_id = ? AND custom_id = ? AND lease_owner = ? AND "
                                 f"state = '{LEASED}'", [(not_before, b, c, owner) for b, c in keys])


class Settled(msgspec.Struct, kw_only=True):
    batch_id: str
    custom_id: str
    request_id: str
    http_status: int
    output: str                      # the output (or error) file's line
    is_error: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


async def settle_lines(ledger: Ledger, done: list[Settled]) -> None:
    """One transaction; a line already done keeps its first outcome."""
    if done:
        await ledger.executemany(
            f"UPDATE batch_lines SET state = '{DONE}', lease_owner = NULL, lease_until = NULL, request_id = ?, "
            "http_status = ?, output = ?, is_error = ?, prompt_tokens = ?, completion_tokens = ?, cached_tokens = ? "
            f"WHERE batch_id = ? AND custom_id = ? AND state != '{DONE}'",
            [(s.request_id, s.http_status, s.output, 1 if s.is_error else 0, s.prompt_tokens, s.completion_tokens,
              s.cached_tokens, s.batch_id, s.custom_id) for s in done])


async def skip_pending(ledger: Ledger, batch_id: str) -> None:
    """Cancelling: lines not started are never run."""
    await ledger.execute(f"UPDATE batch_lines SET state = '{SKIPPED}' WHERE batch_id = ? AND state = '{PENDING}'",
                         batch_id)


class Counts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0
    open: int = 0                    # pending or leased
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


async def counts(ledger: Ledger, batch_id: str) -> Counts:
    rows = await ledger.fetch(
        f"SELECT COUNT(*), SUM(CASE WHEN state = '{DONE}' AND is_error = 0 THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN state = '{DONE}' AND is_error = 1 THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN state IN ('{PENDING}', '{LEASED}') THEN 1 ELSE 0 END), "
        "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cached_tokens), 0) "
        "FROM batch_lines WHERE batch_id = ?", batch_id)
    r = rows[0]
    return Counts(*(int(v or 0) for v in r))


async def outputs(ledger: Ledger, batch_id: str) -> list[tuple[str, bool]]:
    rows = await ledger.fetch(f"SELECT output, is_error FROM batch_lines WHERE batch_id = ? AND state = '{DONE}' "
                              "ORDER BY line_no", batch_id)
    return [(r[0], bool(r[1])) for r in rows]
