"""`serve --workers N`: the workers share the port (the kernel spreads connections over them), SIGTERM to the
parent drains every worker's streams and stops them all, and without Redis N > 1 is refused clearly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

from tests.test_shutdown import _free_port, _wait_up

MASTER = "sk-workers-test"
ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, port: int, redis: str = "") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
server: {{port: {port}, master_key: "{MASTER}", log_level: warning}}
storage: {{database: "sqlite:///{tmp_path}/ledger.db", redis: "{redis}"}}
providers: {{local: {{type: mock, reply_tokens: 10, token_delay_ms: 30}}}}
models: [{{name: mock, targets: [{{provider: local, model: mock}}]}}]
routing: {{drain_seconds: 10}}
""")
    return cfg


def _serve(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "proxy", "serve", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _connections(pid: int, port: int, state: str = "01") -> int:
    """TCP sockets on local `port` in `state` (01 established, 0A listening) that this process holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == state and f[9] in inodes:
            n += 1
    return n


async def test_two_workers_share_the_port_and_drain_on_sigterm(tmp_path):
    port = _free_port()
    proc = _serve("--config", str(_config(tmp_path, port)), "--workers", "2", "--workers-allow-local-state")
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_up(url)
        workers = _children(proc.pid)
        assert len(workers) == 2
        await _both_listening(workers, port)
        body = orjson.dumps({"model": "mock", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        headers = {"Authorization": f"Bearer {MASTER}"}
        first_bytes = 0
        all_started = asyncio.Event()

        async def one(s: aiohttp.ClientSession) -> bytes:
            nonlocal first_bytes
            async with s.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
                assert r.status == 200
                head = await r.content.readany()
                first_bytes += 1
                if first_bytes == 16:
                    all_started.set()
                return head + await r.read()

        # 16 connections at once: the kernel hashes each to one worker's socket (all on one: p = 2^-15)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16, force_close=True)) as s:
            tasks = [asyncio.create_task(one(s)) for _ in range(16)]
            await asyncio.wait_for(all_started.wait(), 10)
            held = {w: _connections(w, port) for w in workers}
            assert all(n >= 1 for n in held.values()) and sum(held.values()) >= 16, held
            proc.send_signal(signal.SIGTERM)        # to the parent only: it forwards to the workers
            streams = await asyncio.gather(*tasks)
        assert all(s.rstrip().endswith(b"data: [DONE]") for s in streams)   # drained, not cut
        assert proc.wait(20) == 0
        assert not [w for w in workers if _running(w)]
        with sqlite3.connect(tmp_path / "ledger.db") as db:       # each worker's usage writer flushed
            assert db.execute("SELECT COUNT(*) FROM usage_events").fetchone()[0] == 16
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the parent (it forwards), so no worker outlives a failed test."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _both_listening(workers: list[int], port: int) -> None:
    for _ in range(200):                        # /health answered: one worker is up; wait for both
        if all(_connections(w, port, "0A") for w in workers):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("a worker never listened")


async def test_workers_of_a_killed_parent_stop_too(tmp_path):
    port = _free_port()
    proc = _serve("--config", str(_config(tmp_path, port)), "--workers", "2", "--workers-allow-local-state")
    try:
        await _wait_up(f"http://127.0.0.1:{port}")
        workers = _children(proc.pid)
        assert len(workers) == 2
        await _both_listening(workers, port)
        proc.kill()                                 # SIGKILL: the parent forwards nothing
        proc.wait()
        for _ in range(200):
            if not [w for w in workers if _running(w)]:
                break
            await asyncio.sleep(0.05)
        assert not [w for w in workers if _running(w)]
    finally:
        _stop(proc)


def test_workers_without_redis_are_refused_with_the_way_out(tmp_path):
    cfg = str(_config(tmp_path, _free_port()))
    proc = _serve("--config", cfg, "--workers", "2")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    msg = err.decode()
    assert "--workers 2 needs storage.redis" in msg and "--workers-allow-local-state" in msg
    assert "Traceback" not in msg
    proc = _serve("--config", cfg, "--workers", "0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--workers must be a positive integer or 'auto'" in err.decode()


def test_a_worker_failing_at_start_up_stops_the_server(tmp_path):
    cfg = _config(tmp_path, _free_port())
    cfg.write_text(cfg.read_text().replace(f"sqlite:///{tmp_path}/ledger.db", "sqlite:////proc/no-such/ledger.db"))
    proc = _serve("--config", str(cfg), "--workers", "2", "--workers-allow-local-state")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "at start-up; stopping" in err.decode()
