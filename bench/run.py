"""`make bench`: one run, three paths to the same fake upstream, same load generator.

direct  -> the fake upstream itself
relay   -> a bare aiohttp relay of a few lines (the stack's own limit)
proxy   -> llm-service with the master key, model routed to the fake upstream

Reports requests/s and p50/p99 per scenario, the proxy's added p50 and its share of the relay's
throughput, time to first byte for streams, and the proxy's peak RSS. Writes bench/results.json.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench import field
from bench.load import run_load

HERE = Path(__file__).parent
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
MASTER = "sk-bench-master"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


LONG_CHUNKS = 1000    # per-chunk overhead: long streams, so per-request costs fade out


def proxy_config(upstream_port: int, port: int, long_port: int, anth_port: int, slow_port: int, trickle_port: int,
                 extra: str = "", short_anth_port: int = 9) -> str:
    return f"""
server: {{host: 127.0.0.1, port: {port}, master_key: "{MASTER}", log_level: warning}}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{upstream_port}/v1", api_key: "sk-upstream"}}
  slow: {{type: openai, base_url: "http://127.0.0.1:{slow_port}/v1", api_key: "sk-upstream"}}
  trickle: {{type: openai, base_url: "http://127.0.0.1:{trickle_port}/v1", api_key: "sk-upstream",
            max_connections: {field.STREAM_POOL}, timeouts: {{connect: 30, first_byte: 60}}}}
  dead: {{type: openai, base_url: "http://127.0.0.1:9/v1"}}
  long: {{type: openai, base_url: "http://127.0.0.1:{long_port}/v1", api_key: "sk-upstream"}}
  anth: {{type: anthropic, base_url: "http://127.0.0.1:{anth_port}", api_key: "sk-ant-bench"}}
  anth_short: {{type: anthropic, base_url: "http://127.0.0.1:{short_anth_port}", api_key: "sk-ant-bench"}}
models:
  - name: slow
    targets: [{{provider: slow, model: bench}}]
  - name: trickle
    targets: [{{provider: trickle, model: bench}}]
  - name: short-anthropic
    targets: [{{provider: anth_short, model: claude-bench}}]
  - name: long-openai
    targets: [{{provider: long, model: bench}}]
  - name: long-anthropic
    targets: [{{provider: anth, model: claude-bench}}]
  - name: bench
    targets: [{{provider: up, model: bench}}]
  - name: fallback                      # primary refuses connections; the breaker opens after 5 failures
    targets: [{{provider: dead, model: x}}, {{provider: up, model: bench}}]
  - name: deadonly
    targets: [{{provider: dead, model: x}}]
routing: {{retries: 0}}
{extra}"""


def spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=HERE.parent)


async def scenarios(urls: dict[str, str]) -> dict[str, dict]:
    headers = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}
    msg = [{"role": "user", "content": "Benchmark prompt: say a few words."}]
    plain = orjson.dumps({"model": "bench", "messages": msg})
    stream = orjson.dumps({"model": "bench", "messages": msg, "stream": True})
    out: dict[str, dict] = {}
    plan = [("nonstream_c1", plain, 1, False), ("nonstream_c32", plain, 32, False),
            ("stream_c1", stream, 1, True), ("stream_c32", stream, 32, True)]
    for name, body, conc, is_stream in plan:
        out[name] = {}
        for path in ("direct", "relay", "proxy"):
            url = urls[path]
            res = await run_load(url, body, headers, conc, SECONDS, is_stream)
            out[name][path] = res.summary()
            print(f"  {name:14s} {path:7s} {res.summary()}", flush=True)
    out["ingress"] = await ingress_scenario(urls, headers, msg)
    out["breaker"] = await breaker_scenario(urls["proxy"], headers, msg)
    out["chunks"] = await chunk_scenario(urls, headers, msg, int(urls["proxy_pid"]))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def chunk_scenario(urls: dict[str, str], headers: dict[str, str], msg: list, proxy_pid: int) -> dict:
    """Issue 3: per-chunk overhead of a converting adapter (Anthropic SSE -> OpenAI chunks) vs the
    pass-through relay. Streams of LONG_CHUNKS deltas at concurrency 4; the figure is the proxy
    process's CPU time per relayed chunk (latency at c=1 mostly shows the fake upstreams' own pacing)."""
    anth_body = orjson.dumps({"model": "claude-bench", "max_tokens": 1024, "stream": True, "messages": msg})
    anth_headers = {"x-api-key": "sk-ant-bench", "anthropic-version": "2026-10-21",
                    "Content-Type": "application/json"}
    plan = {
        "openai_direct": (urls["long_direct"], orjson.dumps({"model": "bench", "messages": msg, "stream": True}),
                          headers),
        "openai_proxy": (urls["proxy"], orjson.dumps({"model": "long-openai", "messages": msg, "stream": True}),
                         headers),
        "anthropic_direct": (urls["anth_direct"], anth_body, anth_headers),
        "anthropic_proxy": (urls["proxy"], orjson.dumps({"model": "long-anthropic", "messages": msg,
                                                          "stream": True}), headers),
    }
    out: dict = {}
    per: dict[str, float] = {}
    for name, (url, body, hdrs) in plan.items():
        before = cpu_seconds(proxy_pid)
        res = await run_load(url, body, hdrs, 4, SECONDS, True, warmup=0.0)
        used = cpu_seconds(proxy_pid) - before
        out[name] = res.summary()
        if name.endswith("_proxy"):
            chunks = (len(res.latencies) + res.errors) * LONG_CHUNKS
            per[name.removesuffix("_proxy")] = used * 1e6 / chunks if chunks else float("nan")
            out[name]["proxy_cpu_us_per_chunk"] = round(per[name.removesuffix("_proxy")], 2)
        print(f"  chunks_c4      {name:17s} {out[name]}", flush=True)
    out["per_chunk_overhead_us"] = {k: round(v, 2) for k, v in per.items()}
    out["anthropic_vs_passthrough"] = round(per["anthropic"] / per["openai"], 2) if per["openai"] > 0 else None
    return out


async def ingress_scenario(urls: dict[str, str], headers: dict[str, str], msg: list) -> dict:
    """Issue 19, streams at concurrency 32 in one run: the Responses API converted to the fake chat upstream
    against chat completions SSE to the same upstream; the Messages API passed through to a fake Anthropic
    upstream against that upstream direct and against chat completions SSE."""
    base = urls["proxy"].removesuffix("/v1/chat/completions")
    anth_headers = {"x-api-key": "sk-ant-bench", "anthropic-version": "2026-10-21",
                    "Content-Type": "application/json"}
    anth = {"max_tokens": 1024, "stream": True, "messages": msg}
    plan = {
        "chat_sse": (urls["proxy"], {"model": "bench", "messages": msg, "stream": True}, headers),
        "responses_sse": (base + "/v1/responses", {"model": "bench", "input": msg[0]["content"], "stream": True},
                          headers),
        "messages_direct": (urls["anth_short_direct"], {**anth, "model": "claude-bench"}, anth_headers),
        "messages_passthrough": (base + "/v1/messages", {**anth, "model": "short-anthropic"},
                                 {**headers, "anthropic-version": "2026-10-21"}),
    }
    out: dict = {}
    for name, (url, body, hdrs) in plan.items():
        res = await run_load(url, orjson.dumps(body), hdrs, 32, SECONDS, True)
        out[name] = res.summary()
        print(f"  ingress_c32    {name:21s} {out[name]}", flush=True)
    rps = {k: v["rps"] for k, v in out.items()}
    out["responses_vs_chat"] = round(rps["responses_sse"] / rps["chat_sse"], 2) if rps["chat_sse"] else None
    out["messages_passthrough_vs_chat"] = (round(rps["messages_passthrough"] / rps["chat_sse"], 2)
                                           if rps["chat_sse"] else None)
    out["messages_passthrough_vs_direct"] = (round(rps["messages_passthrough"] / rps["messages_direct"], 2)
                                             if rps["messages_direct"] else None)
    return out


async def breaker_scenario(url: str, headers: dict[str, str], msg: list) -> dict:
    """Issue 9: once the primary's breaker is open, fallbacks cost (almost) nothing extra, and a model
    whose only target is dead answers 503 at once."""
    body = lambda m: orjson.dumps({"model": m, "messages": msg})  # noqa: E731
    out = {}
    for model, expect in (("bench", 200), ("fallback", 200), ("deadonly", 503)):
        # warm-up of 1 s trips the breaker (5 consecutive refusals) before anything is recorded
        res = await run_load(url, body(model), headers, 1, SECONDS, False, warmup=1.0, expect=expect)
        out[model] = res.summary()
        print(f"  breaker_c1     {model:9s} {res.summary()}", flush=True)
    return out


def report(results: dict) -> None:
    s = dict(results["scenarios"])
    b = s.pop("breaker", None)
    c = s.pop("chunks", None)
    g = s.pop("ingress", None)
    print("\n| scenario | direct rps | relay rps | proxy rps | proxy/relay | direct p50 ms | proxy p50 ms | "
          "added p50 ms | proxy p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in s.items():
        d, r, p = row["direct"], row["relay"], row["proxy"]
        print(f"| {name} | {d['rps']} | {r['rps']} | {p['rps']} | {p['rps'] / r['rps']:.0%} | {d['p50_ms']} | "
              f"{p['p50_ms']} | {p['p50_ms'] - d['p50_ms']:.3f} | {p['p99_ms']} |")
    if b:
        print(f"breaker open: fallback p50/p99 {b['fallback']['p50_ms']}/{b['fallback']['p99_ms']} ms vs healthy "
              f"{b['bench']['p50_ms']}/{b['bench']['p99_ms']} ms (p99 delta "
              f"{b['fallback']['p99_ms'] - b['bench']['p99_ms']:.3f} ms); tripped breaker answers 503 in "
              f"p50/p99 {b['deadonly']['p50_ms']}/{b['deadonly']['p99_ms']} ms")
    if c:
        print(f"per-chunk proxy CPU ({LONG_CHUNKS}-chunk streams, c=4): pass-through "
              f"{c['per_chunk_overhead_us']['openai']} us, Anthropic conversion "
              f"{c['per_chunk_overhead_us']['anthropic']} us (ratio {c['anthropic_vs_passthrough']})")
    if g:
        print(f"ingress streams (c=32, rps): chat SSE {g['chat_sse']['rps']}, Responses converted "
              f"{g['responses_sse']['rps']} ({g['responses_vs_chat']:.0%} of chat; target 80%), Messages pass-through "
              f"{g['messages_passthrough']['rps']} ({g['messages_passthrough_vs_chat']:.0%} of chat, "
              f"{g['messages_passthrough_vs_direct']:.0%} of its upstream direct; target 90%)")
    for name in ("stream_c1", "stream_c32"):
        row = s[name]
        print(f"{name}: ttfb p50 direct {row['direct'].get('ttfb_p50_ms')} ms, relay "
              f"{row['relay'].get('ttfb_p50_ms')} ms, proxy {row['proxy'].get('ttfb_p50_ms')} ms")
    print(f"proxy peak RSS: {results['proxy_peak_rss_mb']:.1f} MB")
    if results.get("field"):
        field.report(results["field"])
    for k, v in results.get("extra", {}).items():
        print(f"{k}: {v}")


def extras() -> dict:
    """Stage-level micro benchmarks that other parts of the gateway contribute (bench/*_bench.py run())."""
    out: dict = {}
    for path in sorted(HERE.glob("*_bench.py")):
        mod = importlib.import_module(f"bench.{path.stem}")
        if hasattr(mod, "run"):
            print(f"running {path.stem} ...", flush=True)
            try:
                out[path.stem] = mod.run()
            except Exception as e:     # one broken micro-bench must not hide the main figures
                out[path.stem] = {"error": f"{type(e).__name__}: {e}"}
    return out


async def field_scenarios(urls: dict[str, str], proxy_pid: int) -> dict:
    headers = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}
    # streams first: the RSS read during a wave then owes nothing to the rps steps' 1,024 connections
    streams = await field.stream_waves({"relay": urls["trickle_relay"], "proxy": urls["proxy"]}, headers,
                                       proxy_pid)
    rps = await field.rps_at_p99({"direct": urls["slow_direct"], "relay": urls["slow_relay"],
                                  "proxy": urls["proxy"]}, headers, SECONDS)
    return {"rps_20ms_p99_under_1s": rps, "streams": streams}


def workers_scenario(urls: dict[str, str], proxy: subprocess.Popen, config: str) -> dict:
    """The same config served by `--workers 2` on another port, beside the running single process."""
    port = free_port()
    two = spawn(["-m", "proxy", "serve", "--config", config, "--port", str(port), "--workers", "2",
                 "--workers-allow-local-state"])
    try:
        wait_port(port)
        time.sleep(1.0)
        headers = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}
        return asyncio.run(field.workers_rps(
            {"1": urls["proxy"], "2": f"http://127.0.0.1:{port}/v1/chat/completions"},
            {"1": proxy.pid, "2": two.pid}, headers, SECONDS))
    finally:
        two.terminate()
        two.wait(60)


def main() -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    field.raise_fd_limit()                   # 5,000 streams: the client, relay and proxy need the fds
    t0 = time.time()
    up_port, relay_port, proxy_port = free_port(), free_port(), free_port()
    long_port, anth_port, short_anth_port = free_port(), free_port(), free_port()
    slow_port, trickle_port, slow_relay_port, trickle_relay_port = free_port(), free_port(), free_port(), free_port()
    procs = [spawn(["-m", "bench.fake_upstream", str(up_port)]),
             spawn(["-m", "bench.fake_upstream", str(long_port), str(LONG_CHUNKS)]),
             spawn(["-m", "tests.fakes.anthropic_upstream", "--port", str(anth_port), "--chunks",
                    str(LONG_CHUNKS)]),
             spawn(["-m", "bench.fake_upstream", str(slow_port), "20", str(field.SLOW_MS)]),
             spawn(["-m", "bench.fake_upstream", str(trickle_port), str(field.TRICKLE_CHUNKS), "0",
                    str(field.TRICKLE_GAP_MS)]),
             spawn(["-m", "tests.fakes.anthropic_upstream", "--port", str(short_anth_port)])]
    for port in (up_port, long_port, anth_port, slow_port, trickle_port, short_anth_port):
        wait_port(port)
    upstream_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    slow_url = f"http://127.0.0.1:{slow_port}/v1/chat/completions"
    procs.append(spawn(["-m", "bench.bare_relay", str(relay_port), upstream_url]))
    procs.append(spawn(["-m", "bench.bare_relay", str(slow_relay_port), slow_url, "1024"]))   # the proxy's pool
    procs.append(spawn(["-m", "bench.bare_relay", str(trickle_relay_port),
                        f"http://127.0.0.1:{trickle_port}/v1/chat/completions", str(field.STREAM_POOL)]))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        # BENCH_PROXY_EXTRA: YAML appended to the proxy's config, e.g. to switch stages off and measure the core.
        f.write(proxy_config(up_port, proxy_port, long_port, anth_port, slow_port, trickle_port,
                             os.environ.get("BENCH_PROXY_EXTRA", ""), short_anth_port))
    proxy = spawn(["-m", "proxy", "serve", "--config", f.name])
    procs.append(proxy)
    try:
        for port in (relay_port, slow_relay_port, trickle_relay_port, proxy_port):
            wait_port(port)
        time.sleep(1.0)                      # idle: started, nothing served yet
        writer = field.writer_pid(proxy.pid)
        rss = {"idle_mb": field.rss_mb(proxy.pid),
               "writer_start_mb": field.rss_mb(writer) if writer else None}
        urls = {"direct": upstream_url,
                "relay": f"http://127.0.0.1:{relay_port}/v1/chat/completions",
                "proxy": f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                "long_direct": f"http://127.0.0.1:{long_port}/v1/chat/completions",
                "anth_direct": f"http://127.0.0.1:{anth_port}/v1/messages", "proxy_pid": str(proxy.pid),
                "anth_short_direct": f"http://127.0.0.1:{short_anth_port}/v1/messages",
                "slow_direct": slow_url, "slow_relay": f"http://127.0.0.1:{slow_relay_port}/v1/chat/completions",
                "trickle_relay": f"http://127.0.0.1:{trickle_relay_port}/v1/chat/completions"}
        print(f"bench: {SECONDS:g}s per scenario, one run, same load generator for all paths", flush=True)
        results = {"seconds_per_scenario": SECONDS, "scenarios": asyncio.run(scenarios(urls)),
                   "proxy_peak_rss_mb": peak_rss_mb(proxy.pid)}
        rss["peak_c32_mb"] = round(results["proxy_peak_rss_mb"], 1)
        results["field"] = asyncio.run(field_scenarios(urls, proxy.pid))
        rss["peak_mb"] = field.rss_mb(proxy.pid, "VmHWM")
        rss["writer_end_mb"] = field.rss_mb(writer) if writer else None
        results["field"]["workers"] = workers_scenario(urls, proxy, f.name)
        results["field"] = {"added_p99_c1": field.added_p99(results["scenarios"]), **results["field"],
                            "rss": rss}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:     # a server that will not stop must not hang the bench
                p.kill()
                p.wait()
        os.unlink(f.name)
    results["extra"] = extras() if os.environ.get("BENCH_EXTRAS", "1") != "0" else {}
    results["wall_seconds"] = round(time.time() - t0, 1)
    (HERE / "results.json").write_text(json.dumps(results, indent=2))
    report(results)
    print(f"\nwrote bench/results.json in {results['wall_seconds']} s")


if __name__ == "__main__":
    main()
