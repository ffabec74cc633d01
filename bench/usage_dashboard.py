"""A ledger with many usage events, and how fast the dashboard reads it.

    python -m bench.usage_dashboard --events 1000000 --days 30 [--database sqlite:////tmp/usage.db]

1. Generates `--events` usage events spread over the last `--days` days (40 keys, each with its source and
   budget; 8 models over 4 providers; ~3% errors, ~10% cache hits, a long-tailed latency), written
   through the gateway's own writer path (`write_events`: events and hourly rollups in one transaction).
   Skipped when the ledger already holds that many events (`--fresh` starts over).
2. Starts the gateway on that ledger and times `/v1/usage/summary` (the 30-day day series in a zone, and
   the per-model split), median of 10, and the overview page in Debian's chromium when it is installed:
   navigation to the 30-day view until its numbers and chart are drawn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

MASTER = "sk-bench-dashboard-master"
HOUR = 3600
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = Path(CHROMIUM).exists()


def _events(n: int, days: int, seed: int = 1):
    from proxy.store.usage import UsageEvent

    rnd = random.Random(seed)
    now = time.time()
    keys = [(f"key_{i:02d}", f"app-{i % 7}", f"budget-{i % 5}") for i in range(40)]
    models = [("gpt-4o-mini", "openai"), ("gpt-4o", "openai"), ("claude-3-5-haiku", "anthropic"),
              ("claude-sonnet-4", "anthropic"), ("gemini-2.0-flash", "gemini"), ("gemini-1.5-pro", "gemini"),
              ("llama3.1:8b", "ollama"), ("mistral-small", "ollama")]
    for i in range(n):
        key, source, budget = keys[min(39, int(rnd.expovariate(1 / 8)))]
        model, provider = models[min(7, int(rnd.expovariate(1 / 2)))]
        pt, ct = rnd.randint(20, 4000), rnd.randint(1, 800)
        status = 200 if rnd.random() > 0.03 else rnd.choice((429, 500, 502, 504))
        cached = status == 200 and rnd.random() < 0.1
        ts = now - rnd.random() * days * 86400
        yield UsageEvent(f"bench-{i}-{uuid.uuid4().hex[:8]}", ts, "", "application", source, None,
                         "chat.completions", model, provider, model, key, budget, pt, ct if status == 200 else 0,
                         0, 0 if cached else (pt * 150 + ct * 600), (pt * 150 + ct * 600) if cached else 0,
                         False, cached, None, rnd.random() < 0.5, status, None,
                         rnd.lognormvariate(6.3, 0.8), None, False)


async def generate(url: str, n: int, days: int, fresh: bool) -> None:
    from proxy.store import open_ledger
    from proxy.store.usage import MAX_BATCH, write_events

    ledger = open_ledger(url)
    await ledger.connect()
    try:
        if fresh:
            await ledger.execute("DELETE FROM usage_events")
            await ledger.execute("DELETE FROM usage_rollups")
        have = int((await ledger.fetch("SELECT COUNT(*) FROM usage_events"))[0][0])
        if have >= n:
            print(f"ledger holds {have} events already")
            return
        t0 = time.perf_counter()
        batch = []
        for e in _events(n - have, days, seed=have + 1):
            batch.append(e)
            if len(batch) == MAX_BATCH:
                await write_events(ledger, batch)
                batch = []
        if batch:
            await write_events(ledger, batch)
        rows = int((await ledger.fetch("SELECT COUNT(*) FROM usage_rollups"))[0][0])
        print(f"wrote {n - have} events in {time.perf_counter() - t0:.1f}s ({rows} hourly rollup rows)")
    finally:
        await ledger.close()


async def measure(url: str, days: int) -> None:
    from proxy.app import build_app
    from proxy.config import parse

    cfg = parse({"server": {"master_key": MASTER}, "storage": {"database": url},
                 "providers": {"local": {"type": "mock"}},
                 "models": [{"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}]}, env={})
    runner = web.AppRunner(build_app(cfg), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - (days - 1) * 86400))
    queries = {"day series (30 d, Europe/Berlin)": f"/v1/usage/summary?group_by=day&tz=Europe/Berlin&since={since}",
               "by model (30 d)": f"/v1/usage/summary?group_by=model&since={since}",
               "by key (30 d)": f"/v1/usage/summary?group_by=key&since={since}",
               "one key by model (30 d)": f"/v1/usage/summary?group_by=model&key=key_03&since={since}",
               "hour series (30 d, Asia/Kolkata)": f"/v1/usage/summary?group_by=hour&tz=Asia/Kolkata&since={since}"}
    try:
        async with aiohttp.ClientSession(headers={"authorization": f"Bearer {MASTER}"}) as s:
            for name, q in queries.items():
                times = []
                for _ in range(10):
                    t0 = time.perf_counter()
                    async with s.get(base + q) as r:
                        body = await r.json()
                        assert r.status == 200, body
                    times.append((time.perf_counter() - t0) * 1000)
                print(f"summary {name}: median {statistics.median(times):.0f} ms, max {max(times):.0f} ms "
                      f"({body['total']['requests']} requests)")
        await _browser(base, days)
    finally:
        await runner.cleanup()


async def _browser(base: str, days: int) -> None:
    chromium = CHROMIUM
    if not HAVE_CHROMIUM:
        print("overview page: skipped (no chromium)")
        return
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = await b.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(base + "/ui/")
        await page.evaluate(f"sessionStorage.setItem('llm-service.key', '{MASTER}')")
        times = []
        for i in range(5):
            t0 = time.perf_counter()
            await page.goto(f"{base}/ui/?n={i}#/overview?range={days}d")
            await page.get_by_test_id("chart-requests").locator("rect.bar").first.wait_for()
            times.append((time.perf_counter() - t0) * 1000)
        total = await page.get_by_test_id("total-requests").inner_text()
        shot = Path(os.environ.get("SCREENSHOT", "")) if os.environ.get("SCREENSHOT") else None
        if shot:
            await page.screenshot(path=shot)
        print(f"overview page ({days} d, {total} requests), navigation to drawn: median "
              f"{statistics.median(times):.0f} ms, max {max(times):.0f} ms")
        await b.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database", default="sqlite:////tmp/llm-service-usage-bench.db")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    asyncio.run(generate(args.database, args.events, args.days, args.fresh))
    asyncio.run(measure(args.database, args.days))


if __name__ == "__main__":
    main()
