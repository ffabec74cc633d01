"""SQLite ledger (aiosqlite): the embedded default. WAL mode and a busy timeout let several proxy
processes on one host share one file; writes are short single statements, so they rarely wait."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import backoff

from proxy.store import migrations
from proxy.store.sqlbase import SQLLedger

BUSY_TIMEOUT_MS = 5000


def sqlite_path(url: str) -> str:
    """`sqlite:///rel.db` -> `rel.db`, `sqlite:////abs.db` -> `/abs.db`, `sqlite://:memory:` -> `:memory:`."""
    rest = url.removeprefix("sqlite://")
    if rest in (":memory:", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/") or rest == "/":
        raise ValueError("storage.database: expected sqlite:///relative/path.db, sqlite:////abs/path.db "
                         "or sqlite://:memory:")
    return rest[1:]


def _not_a_lock(e: Exception) -> bool:
    return "locked" not in str(e) and "busy" not in str(e)


@backoff.on_exception(backoff.expo, sqlite3.OperationalError, giveup=_not_a_lock, max_time=BUSY_TIMEOUT_MS / 1000,
                      factor=0.01, max_value=0.2, logger=None)
async def _switch_to_wal(db: aiosqlite.Connection) -> None:
    """Another process opening a fresh file at the same moment makes this answer "database is locked"
    at once (SQLite does not run the busy handler for a journal-mode change): retry, as busy_timeout would."""
    await db.execute("PRAGMA journal_mode = WAL")


class _Tx:
    """Statements inside `SQLiteLedger.atomic` (the write lock is already held)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def execute(self, sql: str, *args: Any) -> None:
        await self.db.execute(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.db.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self.db.executemany(sql, rows)


class SQLiteLedger(SQLLedger):
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self._db: aiosqlite.Connection | None = None
        self._write = asyncio.Lock()      # one connection: a transaction must not interleave with writes

    async def connect(self) -> None:
        if self._db is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if self.path != ":memory:":
            await _switch_to_wal(db)
            await db.execute("PRAGMA synchronous = NORMAL")
        self._db = db
        await self.migrate()

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("ledger is not connected")
        return self._db

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._write:
            await self.db.execute(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.db.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def fetch_write(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        # Executed and read in one call on the connection's thread: a caller cancelled meanwhile cannot
        # leave a half-read `UPDATE ... RETURNING` (and its write transaction) open.
        async with self._write:
            return [tuple(r) for r in await self.db.execute_fetchall(sql, args)]

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        # Shielded: a caller cancelled between BEGIN and COMMIT would otherwise leave the connection inside
        # a transaction ("cannot start a transaction within a transaction" for every write after it).
        await asyncio.shield(self._executemany(sql, rows))

    async def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        db = self.db
        async with self._write:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.executemany(sql, rows)
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[_Tx]:
        db = self.db
        async with self._write:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(db)
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    async def migrate(self) -> None:
        db = self.db
        await db.execute(migrations.SCHEMA_VERSION_DDL)
        await db.execute("BEGIN IMMEDIATE")          # one migrator at a time across processes
        try:
            applied = {r[0] for r in await self.fetch("SELECT version FROM schema_version")}
            for step, stmts in migrations.pending(applied, self.dialect):
                for s in stmts:
                    await db.execute(s)
                await db.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                                 (step.version, step.name, time.time()))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
