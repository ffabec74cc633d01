"""Budget alerts: a log line and (optionally) a webhook when spend crosses a threshold.

Sending is a background queue: a request never waits for it. A webhook is retried with exponential
backoff (the `backoff` library) on connection errors, timeouts, 429 and 5xx; giving up is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import backoff

from proxy.cost.config import AlertsConfig

log = logging.getLogger("proxy.budget")


class _Retry(Exception):
    pass


def crossed(thresholds: tuple[float, ...], amount: int, before: int, after: int) -> list[float]:
    """Thresholds (percent of `amount`) that `before -> after` crossed upward."""
    if amount <= 0:
        return []
    return [t for t in thresholds if before * 100 < t * amount <= after * 100]


class Alerter:
    def __init__(self, cfg: AlertsConfig) -> None:
        self.cfg = cfg
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.sent: list[dict[str, Any]] = []       # delivered payloads (last 100), for tests and /admin
        self.failed = 0

    def notify(self, event: dict[str, Any]) -> None:
        log.warning("budget %s crossed %g%% (%s): spent $%.6f of $%.6f", event["budget_id"], event["threshold"],
                    event["scope_value"], event["spent_usd"], event["amount_usd"])
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
