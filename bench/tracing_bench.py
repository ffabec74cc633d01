"""Tracing overhead: proxy throughput with tracing off and on (OTLP/HTTP, sample ratio 1.0, to a local
collector that decodes nothing).

As `make bench` runs it: the proxies (`llm-service serve`), the fake upstream, the collector and the
load generator each in their own process (wrk when it is installed, bench/wrk.py says why; else
bench/load.py), the same closed loop at concurrency 32 through the OpenAI
adapter, non-streaming and streaming. A third scenario is harsher: the built-in mock provider, where the
proxy does so little per request that tracing's share is largest. Proxies run side by side, one
with tracing and one without, and short runs alternate between them (`alternations` each), so the slow
drifts of a shared machine hit both alike; the alternations are spread over fresh pairs of processes. Each run is measured after WARMUP s of
load, when the traced proxy hands off and its exporter exports as steadily as under lasting load (a run
from idle would leave most of the exporter's work after its window); the exporter drains before the
other proxy's run. It reports the drop of the medians and the paired drop: the median of
each alternation's on/off ratio, the steadier figure on a noisy machine. Besides requests/s it reports
CPU per request: the proxy process's and the span exporter's. Last, a few seconds of uninterrupted load
on the traced proxy show whether its exporter (at the lowest CPU priority) keeps up: spans dropped.
`python -m bench.tracing_bench [alternations]` prints the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

from bench import wrk
from bench.load import run_load
from bench.procs import MASTER, Proxy, cpu_seconds, fake_upstream, proxy, server
from bench.procs import run as run_loop

SECONDS = float(os.environ.get("BENCH_TRACING_SECONDS", "1" if wrk.available() else "0.5"))   # wrk: whole s
HEADERS = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}
MSG = [{"role": "user", "content": "Benchmark prompt: say a few words."}]
SCENARIOS = (("nonstream_c32", "bench", False, 32, 1.0), ("stream_c32", "bench", True, 32, 1.0),   # the last:
             ("mock_nonstream_c32", "mock", False, 32, 1.0))                            # share of alternations
SUSTAINED = 4.0              # seconds of uninterrupted load on the traced proxy, at the end
WARMUP = 1.0                 # seconds of load before each measured run (two hand-offs at least)
PAIRS = int(os.environ.get("BENCH_TRACING_PAIRS", "4"))    # fresh off/on proxy pairs the alternations spread over
DRAIN = 0.7                  # seconds after a traced run for its exporter to export what it was sent


def collector() -> contextlib.AbstractAsyncContextManager[int]:
    """tests.fakes.otlp_receiver --discard (answers every export, decodes nothing) in its own process."""
    return server("tests.fakes.otlp_receiver", "--port", "{port}", "--discard")


def _exporter_pid(proxy_pid: int) -> int | None:
    """The proxy's child running proxy.telemetry.otlp_child (Linux /proc)."""
    for child in Path(f"/proc/{proxy_pid}/task/{proxy_pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if b"otlp_child" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def _config(up_port: int, sink: int | None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "providers": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1", "api_key": "sk-up"},
                      "local": {"type": "mock", "reply_tokens": 16}},
        "models": [{"name": "bench", "targets": [{"provider": "up", "model": "bench"}]},
                   {"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}],
        "routing": {"retries": 0},
    }
    if sink is not None:
        raw["telemetry"] = {"tracing": {"endpoint": f"http://127.0.0.1:{sink}", "sample_ratio": 1.0}}
    return raw


async def _run(px: Proxy, exporter: int | None, body: bytes, conc: int, stream: bool) -> dict[str, Any]:
    """WARMUP s of load first, so the traced proxy's hand-offs and its exporter's exports are in their
    steady state when the measured SECONDS begin: the exporter's work falls inside the window, not
    after it. CPU is read over the window alone."""
    if wrk.available():
        await wrk.run_wrk(px.url(), body, HEADERS, conc, round(WARMUP))
        p0, x0 = cpu_seconds(px.proc.pid), cpu_seconds(exporter) if exporter else 0.0
        w = await wrk.run_wrk(px.url(), body, HEADERS, conc, round(SECONDS))
        rps, p50, errors, done = w.rps, w.p50_ms, w.errors, w.requests
    else:
        at: dict[str, float] = {}

        def started() -> None:
            at["p"], at["x"] = cpu_seconds(px.proc.pid), cpu_seconds(exporter) if exporter else 0.0

        res = await run_load(px.url(), body, HEADERS, conc, SECONDS, stream, warmup=WARMUP, on_start=started)
        p0, x0 = at["p"], at["x"]
        rps, p50, errors = res.rps, res.pct(res.latencies, 0.5), res.errors
        done = len(res.latencies) + res.errors
    p1, x1 = cpu_seconds(px.proc.pid), cpu_seconds(exporter) if exporter else 0.0
    if exporter:
        await asyncio.sleep(DRAIN)                 # its exporter's tail, before the other proxy's run
    done = max(1, done)
    return {"rps": round(rps, 1), "p50_ms": round(p50, 3), "errors": errors,
            "proxy_cpu_us": round((p1 - p0) / done * 1e6), "exporter_cpu_us": round((x1 - x0) / done * 1e6)}


async def _measure(alternations: int) -> dict[str, Any]:
    """The alternations are spread over PAIRS fresh pairs of proxy processes: two processes of the same
    build differ by up to ~4% in CPU per request (where their memory and threads landed), which no number
    of alternations between the same two cancels; across pairs it averages out."""
    out: dict[str, Any] = {"alternations": alternations, "seconds": SECONDS, "sample_ratio": 1.0, "pairs": PAIRS,
                           "load_generator": "wrk" if wrk.available() else "bench.load", "scenarios": {}}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {"off": [], "on": []} for name, *_ in SCENARIOS}
    dropped = 0.0
    async with fake_upstream() as up_port, collector() as sink:
        for pair in range(PAIRS):
            async with proxy(_config(up_port, None)) as off, proxy(_config(up_port, sink)) as on:
                exporter = _exporter_pid(on.proc.pid)
                warm = orjson.dumps({"model": "mock", "messages": MSG})
                for px in (off, on):                       # the helper processes import their libraries first
                    await run_load(px.url(), warm, HEADERS, 4, 0.5, False)
                await asyncio.sleep(1.0)
                for name, model, stream, conc, share in SCENARIOS:
                    body = orjson.dumps({"model": model, "messages": MSG, "stream": stream})
                    for i in range(pair, max(2, round(alternations * share)), PAIRS):
                        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                            px, x = (off, None) if mode == "off" else (on, exporter)
                            runs[name][mode].append(await _run(px, x, body, conc, stream))
                dropped += await _spans_dropped(on.url("/metrics"))
                if pair == PAIRS - 1:
                    out["sustained"] = await _sustained(on)
    for name, r in runs.items():
        med = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in r.items()}
        o, n = med["off"]["rps"], med["on"]["rps"]
        # Paired: each alternation's two runs are seconds apart, so their ratio cancels the machine's drift.
        paired = statistics.median(b["rps"] / a["rps"] for a, b in zip(r["off"], r["on"], strict=True) if a["rps"])
        out["scenarios"][name] = {**med, "drop_pct": round(100 * (o - n) / o, 1) if o else None,
                                  "paired_drop_pct": round(100 * (1 - paired), 1),
                                  "rps_off_runs": [x["rps"] for x in r["off"]],
                                  "rps_on_runs": [x["rps"] for x in r["on"]]}
    out["spans_dropped"] = dropped
    return out


async def _sustained(on: Proxy) -> dict[str, Any]:
    """The exporter runs at nice 19, on CPU the proxy leaves idle. Does it keep up when the load does not
    pause? SUSTAINED s of the mock at concurrency 32 make more spans than its backlog holds, so a
    falling-behind exporter would drop some."""
    before = await _spans_dropped(on.url("/metrics"))
    body = orjson.dumps({"model": "mock", "messages": MSG})
    if wrk.available():
        w = await wrk.run_wrk(on.url(), body, HEADERS, 32, round(SUSTAINED))
        requests, rps = w.requests - w.errors, w.rps
    else:
        res = await run_load(on.url(), body, HEADERS, 32, SUSTAINED, False, warmup=0.0)
        requests, rps = len(res.latencies), res.rps
    await asyncio.sleep(DRAIN)
    return {"seconds": SUSTAINED, "requests": requests, "rps": round(rps, 1),
            "spans_dropped": await _spans_dropped(on.url("/metrics")) - before}


async def _spans_dropped(url: str) -> float:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(url, headers=HEADERS) as r:
        text = await r.text()
    for fam in text_string_to_metric_families(text):
        if fam.name == "llm_trace_spans_dropped":
            return sum(sample.value for sample in fam.samples)
    return float("nan")


def run(alternations: int = 8) -> dict[str, Any]:
    r: dict[str, Any] = run_loop(_measure(alternations))
    print(f"  tracing: load generator {r['load_generator']}, {r['alternations']} alternations of {r['seconds']:g} s runs"
          f" over {r['pairs']} pairs of proxies",
          flush=True)
    for name, s in r["scenarios"].items():
        off, on = s["off"], s["on"]
        print(f"  tracing {name:19s} off {off['rps']:8.1f} req/s | on {on['rps']:8.1f} req/s | drop {s['drop_pct']}% "
              f"(paired {s['paired_drop_pct']}%) | "
              f"CPU/request: proxy {off['proxy_cpu_us']} -> {on['proxy_cpu_us']} us, exporter {on['exporter_cpu_us']} us"
              f" | runs off {s['rps_off_runs']} on {s['rps_on_runs']}", flush=True)
    sus = r["sustained"]
    print(f"  tracing spans dropped: {r['spans_dropped']}; then {sus['seconds']:g} s sustained (mock, c32): "
          f"{sus['requests']} requests at {sus['rps']} req/s, {sus['spans_dropped']} spans dropped", flush=True)
    return r


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
