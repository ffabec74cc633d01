"""PostgreSQL ledger (asyncpg pool): one ledger shared by many replicas.

`?schema=name` in the URL keeps the tables in their own schema (created if missing), e.g. per test run.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from proxy.store import migrations, safe_url
from proxy.store.sqlbase import SQLLedger

_LOCK_ID = 0x6C6C6D73   # advisory lock id for migrations ("llms")


@functools.lru_cache(maxsize=256)
def to_pg(sql: str) -> str:
    """`?` placeholders -> `$1, $2, ...` (our SQL never has a literal `?`)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], start=1))


def split_schema(url: str) -> tuple[str, str | None]:
    u = urlsplit(url)
    query = parse_qsl(u.query)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit((u.scheme, u.netloc, u.path, rest, u.fragment)), schema


class _Tx:
    """Statements on one connection inside `PostgresLedger.atomic`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(to_pg(sql), *args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(to_pg(sql), *args)]

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self.conn.executemany(to_pg(sql), rows)


class PostgresLedger(SQLLedger):
    dialect = "postgresql"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url, self.schema = split_schema(url)
        if self.schema is not None and not self.schema.replace("_", "").isalnum():
            raise ValueError("storage.database: schema must be letters, digits and _")
        self.min_size, self.max_size = min_size, max_size
        self._pool: asyncpg.Pool | None = None

    async def connect(self) -> None:
        if self._pool is not None:
            return
        settings = {}
        try:
            if self.schema:
                conn = await asyncpg.connect(self.url, timeout=10)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
                settings["search_path"] = self.schema
            self._pool = await asyncpg.create_pool(self.url, min_size=self.min_size, max_size=self.max_size,
                                                   timeout=10, server_settings=settings)
        except (OSError, asyncpg.PostgresError) as e:
            raise RuntimeError(f"storage.database: cannot connect to {safe_url(self.url)}: "
                               f"{type(e).__name__}") from None
        await self.migrate()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("ledger is not connected")
        return self._pool

    async def execute(self, sql: str, *args: Any) -> None:
        await self.pool.execute(to_pg(sql), *args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.pool.fetch(to_pg(sql), *args)]

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self.pool.executemany(to_pg(sql), rows)

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[_Tx]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield _Tx(conn)

    async def migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            await conn.execute(migrations.SCHEMA_VERSION_DDL)
            applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_version")}
            for step, stmts in migrations.pending(applied, self.dialect):
                for s in stmts:
                    await conn.execute(s)
                await conn.execute("INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                                   step.version, step.name, time.time())
