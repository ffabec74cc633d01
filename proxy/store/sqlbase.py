"""The queries both backends share. SQL is written with `?` placeholders; PostgreSQL rewrites them to `$n`.

A backend supplies `execute`, `fetch`, `executemany` and `migrate`; everything else lives here once.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.store import KEY_MUTABLE, AuditEvent, AuditQuery, KeyRecord

KEY_COLS = ("id", "key_hash", "key_prefix", "name", "models", "rpm", "tpm", "max_concurrency", "budget_id",
            "source_id", "source_type", "metadata", "expires_at", "disabled", "revoked_at", "prev_hash",
            "prev_expires_at", "created_at", "updated_at")
_KEY_SELECT = f"SELECT {', '.join(KEY_COLS)} FROM api_keys"
_UPDATABLE = frozenset((*KEY_MUTABLE, "key_hash", "key_prefix", "revoked_at", "prev_hash", "prev_expires_at"))
_FLOATS = frozenset({"expires_at", "revoked_at", "prev_expires_at", "created_at", "updated_at"})
AUDIT_COLS = ("id", "ts", "action", "actor", "target", "ip", "detail")


def _to_db(col: str, value: Any) -> Any:
    if value is None:
        return None
    if col in ("models", "metadata"):
        return orjson.dumps(value).decode()
    if col == "disabled":
        return 1 if value else 0
    if col in _FLOATS:
        return float(value)
    return value


def _key_from_row(row: tuple[Any, ...]) -> KeyRecord:
    d = dict(zip(KEY_COLS, row, strict=True))
    d["models"] = orjson.loads(d["models"]) if d["models"] is not None else None
    d["metadata"] = orjson.loads(d["metadata"] or "{}")
    d["disabled"] = bool(d["disabled"])
    return KeyRecord(**d)


def _audit_from_row(row: tuple[Any, ...]) -> AuditEvent:
    d = dict(zip(AUDIT_COLS, row, strict=True))
    d["detail"] = orjson.loads(d["detail"] or "{}")
    return AuditEvent(**d)


class SQLLedger:
    dialect = "sql"

    async def execute(self, sql: str, *args: Any) -> None:
        raise NotImplementedError

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    async def fetch_write(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A writing statement that returns rows (`UPDATE ... RETURNING`: claiming jobs and lines)."""
        return await self.fetch(sql, *args)

    async def ping(self) -> bool:
        try:
            return (await self.fetch("SELECT 1"))[0][0] == 1
        except Exception:
            return False

    async def insert_key(self, rec: KeyRecord) -> None:
        values = tuple(_to_db(c, getattr(rec, c)) for c in KEY_COLS)
        await self.execute(f"INSERT INTO api_keys ({', '.join(KEY_COLS)}) VALUES ({', '.join('?' * len(KEY_COLS))})",
                           *values)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        rows = await self.fetch(f"{_KEY_SELECT} WHERE id = ?", key_id)
        return _key_from_row(rows[0]) if rows else None

    async def find_key(self, key_hash: str, now: float) -> KeyRecord | None:
        """By the current hash, or by the previous one while a rotation's grace period lasts."""
        rows = await self.fetch(f"{_KEY_SELECT} WHERE key_hash = ?", key_hash)
        if not rows:
            rows = await self.fetch(f"{_KEY_SELECT} WHERE prev_hash = ? AND prev_expires_at > ?",
                                    key_hash, float(now))
        return _key_from_row(rows[0]) if rows else None

    async def list_keys(self, *, limit: int, after: str | None, include_revoked: bool) -> list[KeyRecord]:
        where, args = [], []
        if after is not None:
            where.append("id > ?")
            args.append(after)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        sql = _KEY_SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id LIMIT ?"
        return [_key_from_row(r) for r in await self.fetch(sql, *args, int(limit))]

    async def update_key(self, key_id: str, fields: dict[str, Any]) -> KeyRecord | None:
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        cols = [*fields, "updated_at"]
        values = [_to_db(c, v) for c, v in fields.items()] + [time.time()]
        await self.execute(f"UPDATE api_keys SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                           *values, key_id)
        return await self.get_key(key_id)

    async def write_audit(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        rows = [(float(e.ts), e.action, e.actor, e.target, e.ip, orjson.dumps(e.detail).decode()) for e in events]
        await self.executemany("INSERT INTO audit_log (ts, action, actor, target, ip, detail) "
                               "VALUES (?, ?, ?, ?, ?, ?)", rows)

    async def list_audit(self, q: AuditQuery) -> list[AuditEvent]:
        where: list[str] = []
        args: list[Any] = []
        for col, op, value in (("action", "=", q.action), ("actor", "=", q.actor), ("target", "=", q.target),
                               ("ts", ">=", q.since),
                               ("ts", "<", q.until), ("id", "<", q.before_id)):
            if value is not None:
                where.append(f"{col} {op} ?")
                args.append(float(value) if col == "ts" else value)
        sql = (f"SELECT {', '.join(AUDIT_COLS)} FROM audit_log" + (f" WHERE {' AND '.join(where)}" if where else "")
               + " ORDER BY id DESC LIMIT ?")
        return [_audit_from_row(r) for r in await self.fetch(sql, *args, int(q.limit))]
