"""Shared by the key/admin/store tests: ledger URLs for SQLite and the real PostgreSQL, admin calls."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from tests.conftest import MASTER, make_config, require_service

PG_BASE = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hi"}]


async def pg_available() -> str | None:
    try:
        conn = await asyncpg.connect(PG_BASE, timeout=3)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    await conn.close()
    return None


async def drop_schema(schema: str) -> None:
    for attempt in range(5):
        try:
            return await _drop_schema_once(schema)
        except asyncpg.exceptions.DeadlockDetectedError:
            # A proxy's last background write (audit, usage) can still hold locks: PostgreSQL aborted
            # our DROP, not theirs. Try again once they finish.
            if attempt == 4:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


async def _drop_schema_once(schema: str) -> None:
    conn = await asyncpg.connect(PG_BASE, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger_url(request, tmp_path):
    """A fresh ledger URL: a SQLite file in tmp_path, or a PostgreSQL schema unique to this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.db"
        return
    reason = await pg_available()
    if reason:
        require_service("postgresql", reason)
    schema = f"t_{secrets.token_hex(6)}"
    yield f"{PG_BASE}?schema={schema}"
    await drop_schema(schema)


@pytest.fixture
async def pg_url():
    """A PostgreSQL ledger URL in a schema unique to this test (dropped afterwards)."""
    reason = await pg_available()
    if reason:
        require_service("postgresql", reason)
    schema = f"t_{secrets.token_hex(6)}"
    yield f"{PG_BASE}?schema={schema}"
    await drop_schema(schema)


def key_config(database: str, **sections: Any):
    """Models: `a` and `b` on the mock; `a_fb` = a failing upstream then a target whose upstream id is `b`;
    `c_fb` = a failing upstream, then the public model `b` (`fallbacks`); `gpt-4o-mini` is served by a
    dated upstream id."""
    storage = {"database": database, "key_cache_ttl": 0.2, **sections.pop("storage", {})}
    return make_config(
        providers={"local": {"type": "mock"}, "dead": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        models=[{"name": "a", "targets": [{"provider": "local", "model": "a"}]},
                {"name": "b", "targets": [{"provider": "local", "model": "b"}]},
                {"name": "a_fb", "targets": [{"provider": "dead", "model": "a_fb"},
                                             {"provider": "local", "model": "b"}]},
                {"name": "gpt-4o", "targets": [{"provider": "local", "model": "gpt-4o"}]},
                {"name": "c_fb", "targets": [{"provider": "dead", "model": "c"}], "fallbacks": ["b"]},
                {"name": "gpt-4o-mini", "targets": [{"provider": "local", "model": "gpt-4o-mini-2024-07-18"}]}],
        storage=storage, **sections)


async def call(server, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None):
    async with aiohttp.ClientSession() as s:
        data = orjson.dumps(body) if body is not None else None
        async with s.request(method, server.make_url(path), data=data,
                             headers=ADMIN if headers is None else headers) as r:
            raw = await r.read()
            return r.status, (orjson.loads(raw) if raw else None)


async def create_key(server, **body: Any) -> dict[str, Any]:
    status, data = await call(server, "POST", "/admin/keys", body)
    assert status == 200, data
    return data


async def chat(server, key: str, model: str = "a", header: str = "authorization"):
    headers = {"Authorization": f"Bearer {key}"} if header == "authorization" else {header: key}
    return await call(server, "POST", "/v1/chat/completions", {"model": model, "messages": MSG}, headers)
