"""A/B of two checkouts of the gateway in one run: `python -m bench.ab BASE_DIR [ROUNDS]`
(`BENCH_AB_THIS=DIR` compares another checkout than this one against BASE_DIR).

Both proxies (this tree and BASE_DIR, e.g. a `git worktree` of an earlier commit) serve the same fake
upstream with the same config; the JSON and SSE scenarios at concurrency 32 alternate between them
ROUNDS times (default 6), so machine noise falls on both alike. Reports each side's median req/s and the
median of the per-round B/A ratios. The bare relay runs beside them as the stack's own limit.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from bench.load import run_load
from bench.run import MASTER, free_port, wait_port

HERE = Path(__file__).parent
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))


def config(upstream_port: int, port: int, extra: str = "") -> str:
    """The one model both builds serve: the config every version of the gateway accepts."""
    return f"""
server: {{host: 127.0.0.1, port: {port}, master_key: "{MASTER}", log_level: warning}}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{upstream_port}/v1", api_key: "sk-upstream"}}
models:
  - name: bench
    targets: [{{provider: up, model: bench}}]
routing: {{retries: 0}}
{extra}"""


def spawn_in(cwd: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=cwd, env=env)


async def rounds(urls: dict[str, str], n: int) -> dict[str, dict]:
    headers = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}
    msg = [{"role": "user", "content": "Benchmark prompt: say a few words."}]
    out: dict[str, dict] = {}
    for name, stream in (("nonstream_c32", False), ("stream_c32", True)):
        body = orjson.dumps({"model": "bench", "messages": msg, "stream": stream})
        rps: dict[str, list[float]] = {k: [] for k in urls}
        for i in range(n):
            order = list(urls) if i % 2 == 0 else list(reversed(urls))
            for side in order:
                res = await run_load(urls[side], body, headers, 32, SECONDS, stream)
                rps[side].append(res.rps)
        ratios = [b / a for a, b in zip(rps["base"], rps["this"], strict=True) if a]
        out[name] = {"median_rps": {k: round(statistics.median(v), 1) for k, v in rps.items()},
                     "this_over_base_median": round(statistics.median(ratios), 3),
                     "this_over_relay": round(statistics.median(rps["this"]) / statistics.median(rps["relay"]), 3)}
        print(f"{name}: {out[name]}", flush=True)
    return out


def main() -> None:
    base = Path(sys.argv[1]).resolve()
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    this = Path(os.environ.get("BENCH_AB_THIS", HERE.parent)).resolve()     # default: this checkout
    up, relay = free_port(), free_port()
    procs = [spawn_in(this, ["-m", "bench.fake_upstream", str(up)])]
    wait_port(up)
    upstream_url = f"http://127.0.0.1:{up}/v1/chat/completions"
    procs.append(spawn_in(this, ["-m", "bench.bare_relay", str(relay), upstream_url]))
    urls = {"relay": f"http://127.0.0.1:{relay}/v1/chat/completions"}
    files = []
    for side, tree in (("base", base), ("this", this)):
        port = free_port()
        f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        f.write(config(up, port, os.environ.get("BENCH_PROXY_EXTRA", "")))
        f.close()
        files.append(f.name)
        procs.append(spawn_in(tree, ["-m", "proxy", "serve", "--config", f.name]))
        urls[side] = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        for u in urls.values():
            wait_port(int(u.split(":")[2].split("/")[0]))
        print(f"A/B: {base} (base) vs {this} (this), {n} alternations of {SECONDS:g}s, c=32", flush=True)
        asyncio.run(rounds(urls, n))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(5)
        for name in files:
            os.unlink(name)


if __name__ == "__main__":
    main()
