"""Tracing overhead: proxy throughput with tracing off, then on (OTLP/HTTP to a local sink that discards).

The proxy runs in this process (uvloop when installed, like `serve`) against the built-in mock provider;
the load generator and the OTLP sink run in their own processes so they do not share the proxy's CPU.
`python -m bench.tracing_bench` prints both figures; `run()` returns them.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import time
from typing import Any

MASTER = "sk-bench-master-0123456789"
BODY = {"model": "mock", "messages": [{"role": "user", "content": "Say something short."}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sink(port: int, ready: Any) -> None:
    """An OTLP/HTTP collector that answers every export and keeps nothing."""
    from aiohttp import web

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, handle_signals=True)


def _load(url: str, concurrency: int, seconds: float, warmup: float, stream: bool, out: Any) -> None:
    import aiohttp
    import orjson

    body = orjson.dumps({**BODY, "stream": stream})
    headers = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}

    async def main() -> tuple[int, int]:
        ok = errors = 0
        counting = False
        stop = False

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal ok, errors
            while not stop:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if counting:
                        if r.status == 200:
                            ok += 1
                        else:
                            errors += 1

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            tasks = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
            await asyncio.sleep(warmup)
            counting = True
            await asyncio.sleep(seconds)
            counting, stop = False, True
            await asyncio.gather(*tasks, return_exceptions=True)
        return ok, errors

    out.put(asyncio.run(main()))


async def _measure(tracing_endpoint: str, seconds: float, concurrency: int, stream: bool,
                   sample_ratio: float) -> dict[str, Any]:
    from aiohttp import web

    from proxy.app import build_app
    from proxy.config import parse

    cfg = parse({
        "server": {"master_key": MASTER},
        "storage": {"database": "sqlite://:memory:"},
        "providers": {"local": {"type": "mock", "reply_tokens": 16}},
        "models": [{"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}],
        "telemetry": {"tracing": {"endpoint": tracing_endpoint, "sample_ratio": sample_ratio}},
    }, env={})
    app = build_app(cfg)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_load, args=(f"http://127.0.0.1:{port}/v1/chat/completions", concurrency, seconds,
                                           1.0, stream, out))
    proc.start()
    try:
        ok, errors = await asyncio.to_thread(out.get, True, seconds + 60)
    finally:
        proc.join(10)
        await runner.cleanup()
    return {"rps": round(ok / seconds, 1), "requests": ok, "errors": errors}


def run(seconds: float = 5.0, concurrency: int = 16, stream: bool = True, sample_ratio: float = 1.0) -> dict[str, Any]:
    """Requests/s with tracing off and on; `drop_pct` is the throughput lost to tracing."""
    try:
        import uvloop
        new_loop: Any = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop
    sink_port = _free_port()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    sink = ctx.Process(target=_sink, args=(sink_port, ready), daemon=True)
    sink.start()
    ready.wait(10)
    time.sleep(0.5)
    try:
        results: dict[str, Any] = {}
        for name, endpoint in (("off", ""), ("on", f"http://127.0.0.1:{sink_port}")):
            with asyncio.Runner(loop_factory=new_loop) as runner:
                results[name] = runner.run(_measure(endpoint, seconds, concurrency, stream, sample_ratio))
    finally:
        sink.terminate()
        sink.join(5)
    off, on = results["off"]["rps"], results["on"]["rps"]
    results["drop_pct"] = round(100 * (off - on) / off, 1) if off else None
    results.update(stream=stream, concurrency=concurrency, seconds=seconds, sample_ratio=sample_ratio)
    return results


if __name__ == "__main__":
    import sys

    ratio = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    for streaming in (True, False):
        r = run(stream=streaming, sample_ratio=ratio)
        kind = "stream" if streaming else "non-stream"
        print(f"{kind:>10} (sample_ratio {ratio:g}): tracing off {r['off']['rps']:8.1f} req/s | tracing on {r['on']['rps']:8.1f} req/s"
              f" | drop {r['drop_pct']}%  (errors off={r['off']['errors']} on={r['on']['errors']})")
