"""The ledger on SQLite and the real PostgreSQL: migrations, keys, pagination, audit, shared SQLite files."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.store import AuditEvent, AuditQuery, KeyRecord, open_ledger
from proxy.store import migrations as mig
from proxy.store.postgres import split_schema, to_pg
from proxy.store.sqlite import sqlite_path
from tests.keys_helpers import ledger_url  # noqa: F401  (fixture)


def rec(i: int, **kw) -> KeyRecord:
    now = time.time()
    return KeyRecord(id=f"key_{i:04d}", key_hash=f"h{i}", key_prefix="sk-llm-abcd", name=f"k{i}",
                     created_at=now, updated_at=now, **kw)


async def test_migrations_run_once_and_are_recorded(ledger_url):  # noqa: F811
    first = open_ledger(ledger_url)
    await first.connect()
    second = open_ledger(ledger_url)          # a second process/replica starting on the same ledger
    await second.connect()
    try:
        rows = await second.fetch("SELECT version, name FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == [s.version for s in mig.STEPS]
        assert await first.ping() and await second.ping()
    finally:
        await first.close()
        await second.close()


async def test_appending_a_step_migrates_an_existing_ledger(ledger_url, monkeypatch):  # noqa: F811
    led = open_ledger(ledger_url)
    await led.connect()
    await led.close()
    steps = [*mig.STEPS, mig.Step(len(mig.STEPS) + 1, "probe", sql=("CREATE TABLE probe (id SERIAL_PK, v TEXT)",))]
    monkeypatch.setattr(mig, "STEPS", steps)
    led = open_ledger(ledger_url)
    await led.connect()
    try:
        await led.execute("INSERT INTO probe (v) VALUES (?)", "x")
        await led.execute("INSERT INTO probe (v) VALUES (?)", "y")
        assert await led.fetch("SELECT id, v FROM probe ORDER BY id") == [(1, "x"), (2, "y")]
        versions = [r[0] for r in await led.fetch("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, len(steps) + 1))
    finally:
        await led.close()


def test_bad_step_numbering_is_caught():
    with pytest.raises(RuntimeError, match="expected 2"):
        mig.check_steps([mig.Step(1, "a"), mig.Step(3, "b")])


async def test_key_roundtrip_find_update_and_pagination(ledger_url):  # noqa: F811
    led = open_ledger(ledger_url)
    await led.connect()
    try:
        await led.insert_key(rec(1, models=["a", "gpt-*"], rpm=5, tpm=10_000_000_000, metadata={"team": "x"},
                                 expires_at=time.time() + 60, source_type="service"))
        for i in range(2, 6):
            await led.insert_key(rec(i))
        got = await led.get_key("key_0001")
        assert got is not None and got.models == ["a", "gpt-*"] and got.tpm == 10_000_000_000
        assert got.metadata == {"team": "x"} and got.disabled is False and got.source_type == "service"
        assert (await led.find_key("h1", time.time())).id == "key_0001"
        assert await led.find_key("nope", time.time()) is None
        upd = await led.update_key("key_0002", {"disabled": True, "models": None, "prev_hash": "old2",
                                                "prev_expires_at": time.time() + 30})
        assert upd.disabled is True and upd.models is None
        assert (await led.find_key("old2", time.time())).id == "key_0002"        # rotation grace
        assert await led.find_key("old2", time.time() + 60) is None              # grace over
        page1 = await led.list_keys(limit=2, after=None, include_revoked=False)
        page2 = await led.list_keys(limit=2, after=page1[-1].id, include_revoked=False)
        assert [k.id for k in page1 + page2] == ["key_0001", "key_0002", "key_0003", "key_0004"]
        await led.update_key("key_0003", {"revoked_at": time.time()})
        assert "key_0003" not in [k.id for k in await led.list_keys(limit=10, after=None, include_revoked=False)]
        assert "key_0003" in [k.id for k in await led.list_keys(limit=10, after=None, include_revoked=True)]
        with pytest.raises(ValueError):
            await led.update_key("key_0001", {"id": "evil"})
    finally:
        await led.close()


async def test_audit_write_filter_and_cursor(ledger_url):  # noqa: F811
    led = open_ledger(ledger_url)
    await led.connect()
    try:
        t0 = time.time()
        events = [AuditEvent(ts=t0 + i, action="auth.failure" if i % 2 else "key.create", actor=f"u{i % 3}",
                             ip="10.0.0.1", detail={"i": i}) for i in range(10)]
        await led.write_audit(events)
        newest = await led.list_audit(AuditQuery(limit=3))
        assert [e.detail["i"] for e in newest] == [9, 8, 7]
        older = await led.list_audit(AuditQuery(limit=3, before_id=newest[-1].id))
        assert [e.detail["i"] for e in older] == [6, 5, 4]
        fails = await led.list_audit(AuditQuery(action="auth.failure", limit=100))
        assert sorted(e.detail["i"] for e in fails) == [1, 3, 5, 7, 9]
        window = await led.list_audit(AuditQuery(since=t0 + 2, until=t0 + 5, actor="u0", limit=100))
        assert [e.detail["i"] for e in window] == [3]
    finally:
        await led.close()


async def test_two_processes_share_one_sqlite_file_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    a, b = open_ledger(url), open_ledger(url)
    await asyncio.gather(a.connect(), b.connect())
    try:
        assert (await a.fetch("PRAGMA journal_mode"))[0][0] == "wal"
        assert (await a.fetch("PRAGMA busy_timeout"))[0][0] >= 1000
        await asyncio.gather(*(led.write_audit([AuditEvent(ts=time.time(), action="x", actor=str(i))] * 20)
                               for i in range(10) for led in (a, b)))
        assert (await b.fetch("SELECT COUNT(*) FROM audit_log"))[0][0] == 400
    finally:
        await a.close()
        await b.close()


def test_url_forms():
    assert sqlite_path("sqlite:///data/x.db") == "data/x.db"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    assert sqlite_path("sqlite://:memory:") == ":memory:"
    with pytest.raises(ValueError):
        sqlite_path("sqlite://relative.db")
    with pytest.raises(ValueError):
        open_ledger("mysql://x")
    assert split_schema("postgresql://u@h:5432/db?schema=s1&sslmode=disable") == \
        ("postgresql://u@h:5432/db?sslmode=disable", "s1")
    assert to_pg("a = ? AND b > ?") == "a = $1 AND b > $2"


async def test_sqlite_creates_the_data_directory(tmp_path):
    led = open_ledger(f"sqlite:///{tmp_path}/deep/er/ledger.db")
    await led.connect()
    await led.close()
    assert (tmp_path / "deep" / "er" / "ledger.db").exists()
