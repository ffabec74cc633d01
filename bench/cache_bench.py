"""Cache hit vs miss latency through the full pipeline (`make bench` calls `run()`).

A zero-latency fake OpenAI upstream and the proxy run in this process on
127.0.0.1; one keep-alive client sends sequential non-stream requests. Misses use a distinct prompt each
(a real lookup, upstream call and store); hits repeat one primed prompt. Reports the p50 of both.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from proxy.app import build_app
from proxy.config import parse

MASTER = "sk-bench-master"
ROOT = Path(__file__).resolve().parent.parent
N = 500
ANSWER = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 40}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}})


CHUNK = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench",'
         b'"choices":[{"index":0,"delta":{"content":"word "},"finish_reason":null}]}\n\n')
TAIL = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench",'
        b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}}\n\n'
        b"data: [DONE]\n\n")


async def fake_chat(request: web.Request) -> web.StreamResponse:
    """A zero-latency OpenAI upstream: a canned completion, or 20 chunks + usage + [DONE] for a stream."""
    if not orjson.loads(await request.read()).get("stream"):
        return web.Response(body=ANSWER, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for _ in range(20):
        await resp.write(CHUNK)
    await resp.write(TAIL)
    return resp


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
        if b"content-length" in headers:
            await self.reader.readexactly(int(headers[b"content-length"]))
        else:                                            # a stream: chunked, ends with a zero-size chunk
            await self.reader.readuntil(b"\r\n0\r\n\r\n")
        elapsed = time.perf_counter() - t0
        if not head.startswith(b"HTTP/1.1 200") or headers.get(b"x-llm-cache") != expect.encode():
            status_line = head.split(b"\r\n")[0]
            raise RuntimeError(f"expected a 200 {expect}, got {status_line!r} {headers.get(b'x-llm-cache')!r}")
        return elapsed


def _p50_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


async def _run(n: int, upstream: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    proc: subprocess.Popen[bytes] | None = None
    up_runner: web.AppRunner | None = None
    if upstream == "process":                 # like `make bench`: the upstream has its own process
        up_port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "bench.fake_upstream", str(up_port)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await _wait_port(up_port)
    else:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", fake_chat)
        up_runner, up_port = await _serve(app)
    tmp = tempfile.TemporaryDirectory(prefix="cache-bench-")
    config = parse({
        "server": {"master_key": MASTER, "log_level": "warning"},
        "storage": {"database": f"sqlite:///{tmp.name}/ledger.db"},
        "providers": {"fake": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1"}},
        "models": [{"name": "bench", "targets": [{"provider": "fake", "model": "bench"}]}],
        "cache": {"mode": "all"}, **(extra or {}),
    }, env={})
    proxy_runner, port = await _serve(build_app(config))
    try:
        async with _Client(port) as client:
            def body(prompt: str) -> dict[str, Any]:
                return {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
            for i in range(50):                                    # warm up both paths
                await client.timed(body(f"warm {i}"), "MISS")
                await client.timed(body(f"warm {i}"), "HIT")
            misses, hits, s_misses, s_hits = [], [], [], []
            for i in range(n):                                     # interleaved: same conditions for both
                misses.append(await client.timed(body(f"miss {i}"), "MISS"))
                hits.append(await client.timed(body("warm 0"), "HIT"))
            streamed = {"stream": True, "stream_options": {"include_usage": True}}
            await client.timed({**body("stream warm"), **streamed}, "MISS")
            for i in range(n // 2):
                s_misses.append(await client.timed({**body(f"stream miss {i}"), **streamed}, "MISS"))
                s_hits.append(await client.timed({**body("stream warm"), **streamed}, "HIT"))
    finally:
        await proxy_runner.cleanup()
        if up_runner is not None:
            await up_runner.cleanup()
        if proc is not None:
            proc.terminate()
            proc.wait(5)
        tmp.cleanup()
    miss, hit, s_miss, s_hit = _p50_ms(misses), _p50_ms(hits), _p50_ms(s_misses), _p50_ms(s_hits)
    return {"upstream": upstream, "requests_each": n, "miss_p50_ms": miss, "hit_p50_ms": hit,
            "speedup": round(miss / hit, 2) if hit else float("nan"),
            "stream_requests_each": n // 2, "stream_miss_p50_ms": s_miss, "stream_hit_p50_ms": s_hit,
            "stream_speedup": round(s_miss / s_hit, 2) if s_hit else float("nan")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the fake upstream did not listen on port {port}")


def run(n: int = N, upstream: str = "process", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """`upstream`: "process" (bench.fake_upstream in its own process) or "inline" (same event loop);
    `extra`: more top-level config sections (e.g. to see what telemetry costs)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(n, upstream, extra))
    return uvloop.run(_run(n, upstream, extra))


if __name__ == "__main__":
    for where in sys.argv[1:] or ["process"]:
        res = run(upstream=where)
        print(f"cache ({where} upstream), {res['requests_each']} sequential requests each:\n"
              f"  json:   miss p50 {res['miss_p50_ms']} ms, hit p50 {res['hit_p50_ms']} ms, "
              f"hit {res['speedup']}x faster\n"
              f"  stream: miss p50 {res['stream_miss_p50_ms']} ms, hit p50 {res['stream_hit_p50_ms']} ms, "
              f"hit {res['stream_speedup']}x faster")
