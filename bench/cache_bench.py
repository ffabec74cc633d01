"""Cache hit vs miss latency through the full pipeline (`make bench` calls `run()`).

A zero-latency fake OpenAI upstream (bench.fake_upstream's handler) and the proxy run in this process on
127.0.0.1; one keep-alive client sends sequential non-stream requests. Misses use a distinct prompt each
(a real lookup, upstream call and store); hits repeat one primed prompt. Reports the p50 of both.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import orjson
from aiohttp import web

from bench.fake_upstream import chat as fake_chat
from proxy.app import build_app
from proxy.config import parse

MASTER = "sk-bench-master"
N = 500


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]    # type: ignore[union-attr]
    return runner, port


class _Client:
    """A lean HTTP/1.1 keep-alive client (prebuilt request bytes, Content-Length bodies), so the figures
    measure the proxy rather than the load generator."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> _Client:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.writer is not None
        self.writer.close()

    async def timed(self, body: dict[str, Any], expect: str) -> float:
        assert self.reader is not None and self.writer is not None
        data = orjson.dumps(body)
        req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
               f"Authorization: Bearer {MASTER}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data
        t0 = time.perf_counter()
        self.writer.write(req)
        head = await self.reader.readuntil(b"\r\n\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
        await self.reader.readexactly(int(headers[b"content-length"]))
        elapsed = time.perf_counter() - t0
        if not head.startswith(b"HTTP/1.1 200") or headers.get(b"x-llm-cache") != expect.encode():
            status_line = head.split(b"\r\n")[0]
            raise RuntimeError(f"expected a 200 {expect}, got {status_line!r} {headers.get(b'x-llm-cache')!r}")
        return elapsed


def _p50_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


async def _run(n: int) -> dict[str, Any]:
    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", fake_chat)
    up_runner, up_port = await _serve(upstream)
    config = parse({
        "server": {"master_key": MASTER, "log_level": "warning"},
        "providers": {"fake": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1"}},
        "models": [{"name": "bench", "targets": [{"provider": "fake", "model": "bench"}]}],
        "cache": {"mode": "all"},
    }, env={})
    proxy_runner, port = await _serve(build_app(config))
    try:
        async with _Client(port) as client:
            def body(prompt: str) -> dict[str, Any]:
                return {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
            for i in range(50):                                    # warm up both paths
                await client.timed(body(f"warm {i}"), "MISS")
                await client.timed(body(f"warm {i}"), "HIT")
            misses, hits = [], []
            for i in range(n):                                     # interleaved: same conditions for both
                misses.append(await client.timed(body(f"miss {i}"), "MISS"))
                hits.append(await client.timed(body("warm 0"), "HIT"))
    finally:
        await proxy_runner.cleanup()
        await up_runner.cleanup()
    miss, hit = _p50_ms(misses), _p50_ms(hits)
    return {"requests_each": n, "miss_p50_ms": miss, "hit_p50_ms": hit,
            "speedup": round(miss / hit, 2) if hit else float("nan")}


def run(n: int = N) -> dict[str, Any]:
    try:
        import uvloop
        return uvloop.run(_run(n))
    except ImportError:
        return asyncio.run(_run(n))


if __name__ == "__main__":
    res = run()
    print(f"cache: miss p50 {res['miss_p50_ms']} ms, hit p50 {res['hit_p50_ms']} ms, "
          f"hit is {res['speedup']}x faster ({res['requests_each']} sequential requests each)")
