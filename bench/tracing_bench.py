"""Tracing overhead: proxy throughput with tracing off and on (OTLP/HTTP to a local sink that discards).

The proxy runs in this process (uvloop when installed, like `serve`) against the built-in mock provider;
the load generator, the OTLP sink and the span exporter run in their own processes. Off and on alternate
over `rounds` rounds and the medians are compared, so a burst of other work on the machine hits both.
Besides requests/s it reports CPU per request: the proxy process's and the exporter process's.
`python -m bench.tracing_bench [ratio] [rounds]` prints the figures; `run()` returns them.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import socket
import statistics
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
    from proxy.gateway import GATEWAY

    cfg = parse({
        "server": {"master_key": MASTER},
        "storage": {"database": "sqlite://:memory:"},
        "providers": {"local": {"type": "mock", "reply_tokens": 16}},
        "models": [{"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}],
        "telemetry": {"tracing": {"endpoint": tracing_endpoint, "sample_ratio": sample_ratio}},
    }, env={})
    app = build_app(cfg)
    tracing = app[GATEWAY].telemetry.tracing
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_load, args=(f"http://127.0.0.1:{port}/v1/chat/completions", concurrency, seconds,
                                           1.0, stream, out))
    if tracing is not None:
        await tracing.flush(30)            # the exporter process is up (its start-up is not measured)
    proc.start()
    exporter_pid = tracing.exporter.pid if tracing is not None else None
    cpu0, xcpu0 = time.process_time(), _cpu_of(exporter_pid)
    try:
        ok, errors = await asyncio.to_thread(out.get, True, seconds + 60)
        # CPU over warm-up + measured window (requests counted over the window only): an upper bound.
        cpu, xcpu = time.process_time() - cpu0, _cpu_of(exporter_pid) - xcpu0
        if tracing is not None:
            await tracing.flush(30)        # what the exporter process dropped, too
        dropped = tracing.dropped if tracing is not None else 0
    finally:
        proc.join(10)
        await runner.cleanup()
    window = (seconds + 1.0) / seconds
    per = max(ok, 1) * window
    return {"rps": round(ok / seconds, 1), "requests": ok, "errors": errors, "dropped_spans": dropped,
            "proxy_cpu_us": round(cpu / per * 1e6), "exporter_cpu_us": round(xcpu / per * 1e6)}


def _cpu_of(pid: int | None) -> float:
    """user+system CPU seconds of another process (Linux /proc); 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run(seconds: float = 3.0, concurrency: int = 16, stream: bool = True, sample_ratio: float = 1.0,
        rounds: int = 3) -> dict[str, Any]:
    """Median requests/s with tracing off and on; `drop_pct` is the throughput lost to tracing."""
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
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        modes = (("off", ""), ("on", f"http://127.0.0.1:{sink_port}"))
        for i in range(rounds):
            for name, endpoint in modes if i % 2 == 0 else modes[::-1]:
                with asyncio.Runner(loop_factory=new_loop) as runner:
                    runs[name].append(runner.run(_measure(endpoint, seconds, concurrency, stream, sample_ratio)))
    finally:
        sink.terminate()
        sink.join(5)
    results: dict[str, Any] = {name: _median(rs) for name, rs in runs.items()}
    results["runs"] = runs
    off, on = results["off"]["rps"], results["on"]["rps"]
    results["drop_pct"] = round(100 * (off - on) / off, 1) if off else None
    results.update(stream=stream, concurrency=concurrency, seconds=seconds, sample_ratio=sample_ratio)
    return results


def _median(rs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in rs) for k in rs[0]}


if __name__ == "__main__":
    import sys

    ratio = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for streaming in (True, False):
        r = run(stream=streaming, sample_ratio=ratio, rounds=n)
        kind = "stream" if streaming else "non-stream"
        off, on = r["off"], r["on"]
        print(f"{kind:>10} (sample_ratio {ratio:g}, median of {n}): tracing off {off['rps']:8.1f} req/s | "
              f"tracing on {on['rps']:8.1f} req/s | drop {r['drop_pct']}% | CPU/request: proxy "
              f"{off['proxy_cpu_us']} -> {on['proxy_cpu_us']} us, exporter {on['exporter_cpu_us']} us | "
              f"dropped spans {on['dropped_spans']} | errors off={off['errors']} on={on['errors']}")
        print("           rps per round: off", [x["rps"] for x in r["runs"]["off"]],
              "on", [x["rps"] for x in r["runs"]["on"]])
