"""The ledger: keys and the audit log (usage events and budgets join later), behind one `Ledger` protocol.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) lets several replicas share one ledger.
Both run the same versioned migrations (proxy/store/migrations.py) at start-up.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgspec


class KeyRecord(msgspec.Struct, kw_only=True):
    """A virtual key as stored: never the secret, only its hash and a short visible prefix."""

    id: str
    key_hash: str
    key_prefix: str
    name: str = ""
    models: list[str] | None = None          # None: every model
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_id: str | None = None
    source_id: str | None = None
    source_type: str | None = None
    metadata: dict[str, Any] = {}
    expires_at: float | None = None          # unix seconds
    disabled: bool = False
    revoked_at: float | None = None
    prev_hash: str | None = None             # the secret before the last rotation, valid until prev_expires_at
    prev_expires_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


class AuditEvent(msgspec.Struct, kw_only=True):
    """Who did what, when, from where. `detail` never holds a secret."""

    ts: float
    action: str                              # key.create | key.update | key.revoke | key.rotate | auth.failure ...
    actor: str                               # "master", a key id, "cli", or "anonymous"
    target: str | None = None                # e.g. the key id acted on
    ip: str | None = None
    detail: dict[str, Any] = {}
    id: int | None = None                    # assigned by the ledger


class AuditQuery(msgspec.Struct, kw_only=True):
    action: str | None = None
    actor: str | None = None
    target: str | None = None
    since: float | None = None
    until: float | None = None
    before_id: int | None = None             # cursor: newest first, so "after" in the list means older
    limit: int = 100


# Columns a PATCH may change (everything but identity, hashes and timestamps).
KEY_MUTABLE = ("name", "models", "rpm", "tpm", "max_concurrency", "budget_id", "source_id", "source_type",
               "metadata", "expires_at", "disabled")


class Tx(Protocol):
    """One open transaction (see `Ledger.atomic`)."""

    async def execute(self, sql: str, *args: Any) -> None: ...
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...
    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None: ...


class Ledger(Protocol):
    dialect: str                             # "sqlite" | "postgresql"

    async def connect(self) -> None: ...      # opens, then runs pending migrations
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...

    async def insert_key(self, rec: KeyRecord) -> None: ...
    async def get_key(self, key_id: str) -> KeyRecord | None: ...
    async def find_key(self, key_hash: str, now: float) -> KeyRecord | None: ...
    async def list_keys(self, *, limit: int, after: str | None, include_revoked: bool) -> list[KeyRecord]: ...
    async def update_key(self, key_id: str, fields: dict[str, Any]) -> KeyRecord | None: ...

    async def write_audit(self, events: list[AuditEvent]) -> None: ...
    async def list_audit(self, q: AuditQuery) -> list[AuditEvent]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...
    async def fetch_write(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...   # UPDATE ... RETURNING
    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None: ...    # one transaction
    def atomic(self) -> AbstractAsyncContextManager[Tx]: ...   # statements that commit together or not at all


def open_ledger(url: str) -> Ledger:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db`, `sqlite://:memory:`, or `postgresql://...`.
    The ledger is not connected yet: call `await ledger.connect()` (done on app start-up)."""
    if url.startswith("sqlite://"):
        from proxy.store.sqlite import SQLiteLedger
        return SQLiteLedger(url)
    if url.startswith(("postgresql://", "postgres://")):
        from proxy.store.postgres import PostgresLedger
        return PostgresLedger(url)
    raise ValueError("storage.database: expected sqlite:///path.db, sqlite://:memory: or postgresql://...")


def safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    import re
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
