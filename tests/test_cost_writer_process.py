"""The usage writer process: events reach the ledger through it, a killed child loses nothing, a dead one
is replaced, shutdown writes what the child could not confirm, and an in-memory ledger stays inline."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3

import pytest

from proxy.config import ConfigError
from proxy.gateway import GATEWAY
from proxy.store.usage import UsageWriter
from proxy.store.usage_process import ProcessUsageWriter
from tests.conftest import make_config
from tests.cost_helpers import chat_body, priced_config, request


def _count(db) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(DISTINCT request_id) FROM usage_events").fetchone()[0])


async def _child_pid(writer: ProcessUsageWriter, within: float = 10.0, other: int | None = None) -> int:
    for _ in range(int(within / 0.02)):
        proc = writer._proc
        if proc is not None and proc.returncode is None and writer._stdin is not None and proc.pid != other:
            return proc.pid
        await asyncio.sleep(0.02)
    raise AssertionError("the usage writer process did not start")


async def test_a_file_ledger_is_written_by_the_child_process(start_proxy, tmp_path):
    db = tmp_path / "l.db"
    server = await start_proxy(priced_config(f"sqlite:///{db}"))
    writer = server.app[GATEWAY].accounting.writer
    assert isinstance(writer, ProcessUsageWriter)
    pid = await _child_pid(writer)
    assert pid != os.getpid()
    url = str(server.make_url(""))
    for _ in range(5):
        st, _, _ = await request(url, "POST", "/v1/chat/completions", chat_body())
        assert st == 200
    st, body, _ = await request(url, "GET", "/v1/usage")    # flushes through the child first
    assert st == 200 and len(body["data"]) == 5
    assert _count(db) == 5 and writer.written == 5 and writer.pending == 0


async def test_a_killed_child_is_replaced_and_its_unconfirmed_batches_resent(start_proxy, tmp_path):
    db = tmp_path / "l.db"
    server = await start_proxy(priced_config(f"sqlite:///{db}", accounting={"flush_interval": 0.05}))
    writer = server.app[GATEWAY].accounting.writer
    url = str(server.make_url(""))
    first = await _child_pid(writer)
    os.kill(first, signal.SIGSTOP)          # frozen: batches go down its pipe and are never confirmed
    for _ in range(6):
        st, _, _ = await request(url, "POST", "/v1/chat/completions", chat_body())
        assert st == 200
    await asyncio.sleep(0.2)                # handed off to the frozen child
    assert writer.pending == 6 and _count(db) == 0
    os.kill(first, signal.SIGKILL)
    await _child_pid(writer, other=first)
    for _ in range(4):
        st, _, _ = await request(url, "POST", "/v1/chat/completions", chat_body())
        assert st == 200
    st, body, _ = await request(url, "GET", "/v1/usage?limit=100")
    assert st == 200 and len(body["data"]) == 10
    assert _count(db) == 10 and writer.pending == 0 and writer.restarts == 1


async def test_shutdown_writes_what_no_child_confirmed(tmp_path):
    """No child at all (it cannot start): close() writes the events through the proxy's own connection."""
    from proxy.store import open_ledger
    from proxy.store.usage import UsageEvent

    db = tmp_path / "l.db"
    ledger = open_ledger(f"sqlite:///{db}")
    await ledger.connect()
    writer = ProcessUsageWriter(ledger, f"sqlite:///{db}", interval=0.05)
    writer._run_child = _refuse                                 # type: ignore[method-assign]
    writer.start()
    for i in range(3):
        writer.add(UsageEvent(request_id=f"req_{i}", ts=1.0, day="1970-01-01", model="m", status=200))
    await asyncio.sleep(0.1)
    assert writer.pending == 3 and _count(db) == 0
    await writer.close(within=0.3)
    await ledger.close()
    assert _count(db) == 3 and writer.written == 3


async def _refuse() -> None:
    raise OSError("no child here")


def test_an_in_memory_ledger_is_written_inline_and_process_is_refused(tmp_path):
    from proxy.app import build_gateway
    from proxy.keyservice import KeyStore

    cfg = make_config()                                         # sqlite://:memory:
    assert isinstance(build_gateway(cfg, KeyStore(cfg)).accounting.writer, UsageWriter)  # type: ignore[union-attr]
    inline = make_config(storage={"database": f"sqlite:///{tmp_path}/l.db"}, accounting={"writer": "inline"})
    assert isinstance(build_gateway(inline, KeyStore(inline)).accounting.writer, UsageWriter)  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"accounting\.writer"):
        make_config(accounting={"writer": "process"})


async def test_a_read_while_the_writer_is_stuck_is_a_clear_503(start_proxy, tmp_path):
    server = await start_proxy(priced_config(f"sqlite:///{tmp_path}/l.db"))
    writer = server.app[GATEWAY].accounting.writer
    url = str(server.make_url(""))
    pid = await _child_pid(writer)
    os.kill(pid, signal.SIGSTOP)                    # frozen: it confirms nothing
    try:
        st, _, _ = await request(url, "POST", "/v1/chat/completions", chat_body())
        assert st == 200                            # requests never wait for the ledger
        st, body, headers = await request(url, "GET", "/v1/usage")
        assert st == 503 and body["error"]["type"] and "ledger" in body["error"]["message"]
        assert {k.lower(): v for k, v in headers.items()}.get("retry-after") == "1", headers
    finally:
        os.kill(pid, signal.SIGCONT)
    st, body, _ = await request(url, "GET", "/v1/usage")
    assert st == 200 and len(body["data"]) == 1     # written once the writer runs again


async def test_every_batch_size_uses_the_same_few_insert_statements(tmp_path):
    """One statement per batch size filled SQLite's statement cache (128 per connection, up to 1,000 rows
    each): the writer process grew without bound. Any batch is now made of the few CHUNKS statements."""
    from proxy.store import open_ledger
    from proxy.store.usage import CHUNKS, UsageEvent, chunks, write_events

    assert all(sum(chunks(n)) == n and set(chunks(n)) <= set(CHUNKS) for n in range(1, 1001))
    ledger = open_ledger(f"sqlite:///{tmp_path / 'l.db'}")
    await ledger.connect()
    seen: set[str] = set()
    execute = ledger.execute

    async def counting(sql, *args):
        seen.add(sql)
        await execute(sql, *args)
    ledger.execute = counting                       # type: ignore[method-assign]
    try:
        sizes = [1, 2, 3, 5, 17, 63, 64, 65, 255, 256, 257, 300, 511, 999]
        n = 0
        for size in sizes:
            await write_events(ledger, [UsageEvent(f"r{n + i}", 1.0, "2026-01-01") for i in range(size)])
            n += size
        await write_events(ledger, [UsageEvent("r0", 1.0, "2026-01-01")])     # a replay is skipped
    finally:
        ledger.execute = execute                    # type: ignore[method-assign]
        await ledger.close()
    assert len(seen) <= len(CHUNKS)
    assert _count(tmp_path / "l.db") == n == sum(sizes)
