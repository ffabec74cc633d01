"""`llm-service usage backfill-rollups`: rebuild the hourly usage rollups from the raw usage events.

For a ledger written before the rollups existed (migration 4), or after events were edited by hand. Safe
while gateways write (see proxy/store/rollups.py `backfill`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from proxy.config import Config
from proxy.keyservice import parse_time
from proxy.store import open_ledger, rollups


async def _backfill(cfg: Config, since: float | None) -> int:
    ledger = open_ledger(cfg.storage.database)
    await ledger.connect()                 # runs pending migrations: the rollup table exists after this
    try:
        return await rollups.backfill(ledger, since)
    finally:
        await ledger.close()


def add_parser(sub: Any, load: Callable[[str], Config]) -> None:
    p = sub.add_parser("usage", help="usage ledger maintenance")
    us = p.add_subparsers(dest="usage_command", required=True)
    b = us.add_parser("backfill-rollups", help="rebuild the hourly usage rollups from the usage events")
    b.add_argument("--config", default="config.yaml")
    b.add_argument("--since", help="only hours from this time (unix seconds or ISO 8601, UTC); default: all")

    def run(args: argparse.Namespace) -> int:
        cfg = load(args.config)
        try:
            since = parse_time(float(args.since) if args.since and args.since.replace(".", "").isdigit()
                               else args.since, "since")
        except Exception:
            print("error: --since: expected unix seconds or an ISO 8601 date-time", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        try:
            rows = asyncio.run(_backfill(cfg, since))
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"rebuilt {rows} hourly rollup rows in {time.perf_counter() - t0:.2f}s")
        return 0

    b.set_defaults(func=run)
