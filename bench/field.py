"""The field's four figures (the open gateway benchmark method), measured in `make bench`'s run:

1. added p99 at concurrency 1 over the direct upstream (from the run's `nonstream_c1`; the relay beside it);
2. requests/s with a 20 ms upstream while p99 stays under 1 s: closed-loop steps of rising concurrency,
   the best step that keeps p99 < 1 s with no error, for the relay and the proxy;
3. stall-free streams: waves of N concurrent streams (all started at once) from a trickling upstream
   (20 chunks, 50 ms apart): errors (a status, a cut, a missing `[DONE]`), time to first byte p50/p99
   against the relay's in the same wave, and the proxy's RSS during the wave; a level is held with 0
   errors and TTFB p99 within 1.5x the relay's (marked client-bound where even the relay's TTFB p99 passes
   a stream's whole second). 1,000 is the target; 2,000 and 5,000 show where it breaks;
4. idle and peak RSS (the proxy right after start; the peak under the c=32 scenarios; its usage writer
   process at start and at the end of the run: flat, not growing).
Beside them: `serve --workers 1` and `2` at c=32, requests/s and CPU per 1,000 requests.

One client process drives every path (its own CPU is part of what a wave measures: compare paths, not
absolute numbers). The machine is small and shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from pathlib import Path

import aiohttp
import orjson

from bench.load import run_load

SLOW_MS = 20                         # the 20 ms upstream
TRICKLE_CHUNKS, TRICKLE_GAP_MS = 20, 50
STREAM_POOL = 8192                   # the proxy's and the relay's pool in the scale waves: the process breaks,
                                     # not a pool (the default pool, 1024, holds the 1,000-stream target)
RPS_STEPS = (32, 128, 512, 1024)
STREAM_LEVELS = tuple(int(x) for x in os.environ.get("BENCH_STREAM_LEVELS", "1000,2000,5000").split(","))
TTFB_RATIO = 1.5


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def child_pids(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
    return out


def writer_pid(proxy_pid: int) -> int | None:
    for c in child_pids(proxy_pid):
        with contextlib.suppress(OSError):
            if b"usage_child" in Path(f"/proc/{c}/cmdline").read_bytes():
                return c
    return None


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def added_p99(scenarios: dict) -> dict:
    row = scenarios["nonstream_c1"]
    d, r, p = (row[k]["p99_ms"] for k in ("direct", "relay", "proxy"))
    return {"direct_p99_ms": d, "relay_added_p99_ms": round(r - d, 3), "proxy_added_p99_ms": round(p - d, 3)}


async def rps_at_p99(urls: dict[str, str], headers: dict[str, str], seconds: float) -> dict:
    """Closed loop at each step of RPS_STEPS; the best requests/s with p99 < 1 s and no error."""
    body = orjson.dumps({"model": "slow", "messages": [{"role": "user", "content": "Benchmark prompt."}]})
    out: dict = {}
    for path, url in urls.items():
        steps = {}
        for c in RPS_STEPS:
            res = (await run_load(url, body, headers, c, seconds, False, warmup=0.3)).summary()
            steps[c] = {k: res[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
            print(f"  upstream_20ms  {path:7s} c={c:<4d} {steps[c]}", flush=True)
        ok = [s["rps"] for s in steps.values() if s["p99_ms"] < 1000 and s["errors"] == 0]
        out[path] = {"rps": max(ok) if ok else 0.0, "steps": steps}
    return out


async def _wave(url: str, headers: dict[str, str], n: int, pid: int | None) -> dict:
    body = orjson.dumps({"model": "trickle", "stream": True,
                         "messages": [{"role": "user", "content": "Benchmark prompt."}]})
    ttfb: list[float] = []
    total: list[float] = []
    errors: dict[str, int] = {}
    peak = 0.0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set() and pid is not None:
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.1)

    async def one(s: aiohttp.ClientSession) -> None:
        t0 = time.perf_counter()
        try:
            async with s.post(url, data=body, headers=headers) as r:
                if r.status != 200:
                    errors[f"status {r.status}"] = errors.get(f"status {r.status}", 0) + 1
                    await r.read()
                    return
                first = await r.content.readany()
                ttfb.append(time.perf_counter() - t0)
                rest = await r.read()
                if not (first + rest).rstrip().endswith(b"data: [DONE]"):
                    errors["cut"] = errors.get("cut", 0) + 1
                    return
                total.append(time.perf_counter() - t0)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
        sampler = asyncio.create_task(sample())
        t0 = time.perf_counter()
        await asyncio.gather(*(one(s) for _ in range(n)))
        wall = time.perf_counter() - t0
        done.set()
        await sampler

    def pct(v: list[float], q: float) -> float | None:
        return round(sorted(v)[min(len(v) - 1, int(q * len(v)))] * 1000, 1) if v else None
    out = {"streams": n, "errors": sum(errors.values()), "ttfb_p50_ms": pct(ttfb, 0.5),
           "ttfb_p99_ms": pct(ttfb, 0.99), "total_p99_ms": pct(total, 0.99), "wall_s": round(wall, 2)}
    if errors:
        out["error_kinds"] = errors
    if pid is not None:
        out["rss_peak_mb"] = peak
    return out


async def stream_waves(urls: dict[str, str], headers: dict[str, str], proxy_pid: int) -> dict:
    out: dict = {}
    for n in STREAM_LEVELS:
        relay = await _wave(urls["relay"], headers, n, None)
        await asyncio.sleep(0.5)                 # let closed connections go before the next wave
        proxy = await _wave(urls["proxy"], headers, n, proxy_pid)
        await asyncio.sleep(0.5)
        r99, p99 = relay["ttfb_p99_ms"], proxy["ttfb_p99_ms"]
        held = proxy["errors"] == 0 and p99 is not None and r99 is not None and p99 <= TTFB_RATIO * r99
        out[str(n)] = {"relay": relay, "proxy": proxy, "held": held,
                       "ttfb_p99_vs_relay": round(p99 / r99, 2) if p99 and r99 else None,
                       # the bare relay's own first byte past a stream's whole length (1 s): the client
                       # process and the machine are the limit there, not the proxy
                       "client_bound": r99 is None or r99 > TRICKLE_CHUNKS * TRICKLE_GAP_MS}
        print(f"  streams_{n:<6d} relay {relay}\n  streams_{n:<6d} proxy {proxy} held={held}", flush=True)
    return out


def report(field: dict) -> None:
    a, r, s, m = field["added_p99_c1"], field["rps_20ms_p99_under_1s"], field["streams"], field["rss"]
    print("\n| field figure | relay | proxy |\n|---|---|---|")
    print(f"| added p99 at c=1 over direct ({a['direct_p99_ms']} ms) | {a['relay_added_p99_ms']} ms | "
          f"{a['proxy_added_p99_ms']} ms |")
    print(f"| rps, 20 ms upstream, p99 < 1 s | {r['relay']['rps']} | {r['proxy']['rps']} |")
    for n, row in s.items():
        rl, px = row["relay"], row["proxy"]
        print(f"| {n} trickling streams: errors, ttfb p50/p99 ms | {rl['errors']}, {rl['ttfb_p50_ms']}/"
              f"{rl['ttfb_p99_ms']} | {px['errors']}, {px['ttfb_p50_ms']}/{px['ttfb_p99_ms']} "
              f"({row['ttfb_p99_vs_relay']}x, RSS {px.get('rss_peak_mb')} MB, "
              f"{'held' if row['held'] else 'BROKE'}{', client-bound' if row.get('client_bound') else ''}) |")
    print(f"| proxy RSS idle / peak under c=32 / peak overall | | {m['idle_mb']} / {m['peak_c32_mb']} / "
          f"{m['peak_mb']} MB |")
    print(f"| usage writer RSS start -> end | | {m['writer_start_mb']} -> {m['writer_end_mb']} MB |")
    for name, w in field.get("workers", {}).items():
        print(f"| serve --workers {name}: rps at c=32, CPU s per 1k requests | | {w['rps']}, "
              f"{w['cpu_s_per_1k_requests']} |")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children and grandchildren (workers, their writer processes)."""
    from bench.procs import cpu_seconds
    total = 0.0
    for p in [pid, *(kids := child_pids(pid)), *(g for k in kids for g in child_pids(k))]:
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


async def workers_rps(urls: dict[str, str], pids: dict[str, int], headers: dict[str, str], seconds: float) -> dict:
    """Non-streamed requests at c=32 against `serve` with 1 and 2 workers: requests/s and the CPU they took
    per 1,000 requests (every process of the server), to plan a bigger machine. The load generator runs
    on the same two cores, so 2 workers gain little here."""
    body = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "Benchmark prompt."}]})
    out: dict = {}
    for name, url in urls.items():
        pid = pids[name]
        mark: list[float] = []

        def start(p: int = pid, m: list[float] = mark) -> None:
            m.append(_tree_cpu(p))
        res = await run_load(url, body, headers, 32, seconds, False, on_start=start)
        used = _tree_cpu(pid) - mark[0]
        s = res.summary()
        out[name] = {"rps": s["rps"], "p99_ms": s["p99_ms"], "errors": s["errors"],
                     "cpu_s_per_1k_requests": round(used * 1000 / max(1, len(res.latencies)), 3)}
        print(f"  workers        {name:9s} {out[name]}", flush=True)
    return out
