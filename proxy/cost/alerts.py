"""Budget alerts: a log line, a ledger row and (optionally) a webhook when spend crosses a threshold.

Recording and sending are background queues: a request never waits for them. Rows are inserted in batches
and keyed by (budget, period, scope value, threshold), so a crossing seen twice (replicas without a shared
counter, a retried insert) is stored once. A webhook is retried with exponential backoff (the `backoff`
library) on connection errors, timeouts, 429 and 5xx; giving up is logged. The two queues are apart so a
slow webhook never delays the record the dashboard reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

import aiohttp
import backoff

from proxy.cost.config import AlertsConfig
from proxy.store import Ledger
from proxy.store.budgets import FiredAlert, record_alerts

log = logging.getLogger("proxy.budget")


class _Retry(Exception):
    pass


def crossed(thresholds: tuple[float, ...], amount: int, before: int, after: int) -> list[float]:
    """Thresholds (percent of `amount`) that `before -> after` crossed upward."""
    if amount <= 0:
        return []
    return [t for t in thresholds if before * 100 < t * amount <= after * 100]


def fired(event: dict[str, Any]) -> FiredAlert:
    """The ledger row of a webhook event (pipeline/budget.py `alert_event`)."""
    start = dt.datetime.fromisoformat(event["period_start"].replace("Z", "+00:00")).timestamp()
    return FiredAlert(budget_id=event["budget_id"], scope_value=event["scope_value"], period_start=int(start),
                      threshold=float(event["threshold"]), spent_nanos=round(event["spent_usd"] * 1e9),
                      fired_at=float(event["ts"]))


class Alerter:
    def __init__(self, cfg: AlertsConfig, ledger: Ledger | None = None) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._task: asyncio.Task[None] | None = None
        self._records: asyncio.Queue[FiredAlert] = asyncio.Queue(maxsize=10_000)
        self._record_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.sent: list[dict[str, Any]] = []       # delivered payloads (last 100), for tests and /admin
        self.failed = 0
        self.record_failures = 0

    def notify(self, event: dict[str, Any]) -> None:
        log.warning("budget %s crossed %g%% (%s): spent $%.6f of $%.6f", event["budget_id"], event["threshold"],
                    event["scope_value"], event["spent_usd"], event["amount_usd"])
        if self.ledger is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._records.put_nowait(fired(event))
            if self._record_task is None:
                self._record_task = asyncio.create_task(self._record_run(), name="budget-alert-records")
        if not self.cfg.webhook_url:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(event)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="budget-alerts")

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._send(event)
                self.sent = [*self.sent[-99:], event]
            except Exception as e:
                self.failed += 1
                log.error("budget alert webhook gave up after %d tries: %s", self.cfg.max_tries, type(e).__name__)
            finally:
                self._queue.task_done()

    async def _record_run(self) -> None:
        assert self.ledger is not None
        while True:
            batch = [await self._records.get()]
            while not self._records.empty() and len(batch) < 500:
                batch.append(self._records.get_nowait())
            try:
                await self._record(batch)
            finally:
                for _ in batch:
                    self._records.task_done()

    async def _record(self, batch: list[FiredAlert]) -> None:
        assert self.ledger is not None
        ledger = self.ledger

        @backoff.on_exception(backoff.expo, Exception, max_tries=3, factor=0.1, max_value=2, logger=None)
        async def insert() -> None:
            await record_alerts(ledger, batch)

        try:
            await insert()
        except Exception as e:
            self.record_failures += len(batch)
            log.error("budget alerts not recorded in the ledger (%d lost): %s", len(batch), type(e).__name__)

    async def _send(self, event: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout))
        session = self._session

        @backoff.on_exception(backoff.expo, (aiohttp.ClientError, TimeoutError, _Retry),
                              max_tries=self.cfg.max_tries, factor=0.2, max_value=10, logger=None)
        async def post() -> None:
            async with session.post(self.cfg.webhook_url, json=event, headers=self.cfg.headers) as r:
                if r.status == 429 or r.status >= 500:
                    raise _Retry(f"HTTP {r.status}")
                if r.status >= 400:
                    log.error("budget alert webhook refused the event: HTTP %d", r.status)

        await post()

    async def close(self, drain: float = 2.0) -> None:
        """Before the ledger closes: the queued records are written first (they are what the API reads)."""
        if self._record_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._records.join(), drain)
            self._record_task.cancel()
            with contextlib.suppress(BaseException):
                await self._record_task
            self._record_task = None
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
