"""SIGTERM: /ready fails, new calls get 503, the streams in flight all finish, then the process exits."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import orjson

MASTER = "sk-shutdown-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("server did not start")


async def test_sigterm_lets_open_streams_finish(tmp_path):
    port = _free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
server: {{port: {port}, master_key: "{MASTER}", log_level: warning}}
storage: {{database: "sqlite:///{tmp_path}/ledger.db"}}
providers: {{local: {{type: mock, reply_tokens: 20, token_delay_ms: 40}}}}
models: [{{name: mock, targets: [{{provider: local, model: mock}}]}}]
routing: {{drain_seconds: 10}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_up(url)
        body = orjson.dumps({"model": "mock", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        headers = {"Authorization": f"Bearer {MASTER}"}
        started = asyncio.Event()
        count = 0

        async def one(s: aiohttp.ClientSession) -> bytes:
            nonlocal count
            async with s.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
                assert r.status == 200
                first = await r.content.readany()
                count += 1
                if count == 20:
                    started.set()
                return first + await r.read()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as s:
            tasks = [asyncio.create_task(one(s)) for _ in range(20)]
            await asyncio.wait_for(started.wait(), 10)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as fresh:
                async with fresh.get(url + "/ready") as r:
                    assert r.status == 503
                async with fresh.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
                    assert r.status == 503
                    assert (await r.json())["error"]["code"] == "service_unavailable"
            results = await asyncio.gather(*tasks)
        assert len(results) == 20
        assert all(r.endswith(b"data: [DONE]\n\n") for r in results)
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
