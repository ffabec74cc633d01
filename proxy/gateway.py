"""The running gateway's parts, shared by every ingress: config, backends, router, auth, pipeline."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.config import Config
from proxy.context import ChatCall
from proxy.pipeline import Handler
from proxy.pipeline.auth import Authenticator
from proxy.routing.backends import Backend
from proxy.routing.router import Router

if TYPE_CHECKING:
    from proxy.cost.accounting import Accounting
    from proxy.keyservice import KeyStore
    from proxy.pipeline.cache import CacheStage
    from proxy.pipeline.ratelimit import RateLimitStage
    from proxy.telemetry import Telemetry

log = logging.getLogger("proxy")

ReadyCheck = Callable[[], Awaitable[bool]]
Observer = Callable[[ChatCall], Awaitable[None] | None]


@dataclass(slots=True)
class Gateway:
    config: Config
    backends: dict[str, Backend]
    router: Router
    auth: Authenticator
    pipeline: Handler
    ready_checks: dict[str, ReadyCheck] = field(default_factory=dict)
    observers: list[Observer] = field(default_factory=list)     # run for every finished call (logs, metrics)
    accepting: bool = True               # False once SIGTERM arrived: /ready fails, new calls get 503
    inflight: int = 0                    # calls between ingress and their last byte (drain waits on it)
    cache: CacheStage | None = None      # the response cache stage (admin invalidation, stats)
    keys: KeyStore | None = None         # the ledger, virtual key lookup, audit log (admin API, CLI)
    telemetry: Telemetry | None = None   # traces, metrics, access log (GET /metrics reads it)
    accounting: Accounting | None = None  # prices, usage ledger writer, budgets, alerts (/v1/usage, /admin/budgets)
    limits: RateLimitStage | None = None  # rate limits and quotas (GET /v1/quota, Redis client lifecycle)

    async def finish(self, call: ChatCall) -> None:
        try:
            await call.finish()
        except Exception:
            log.exception("finaliser failed for %s", call.request_id)
        for obs in self.observers:
            try:
                res = obs(call)
                if res is not None:
                    await res
            except Exception:
                log.exception("observer failed for %s", call.request_id)


GATEWAY = web.AppKey("gateway", Gateway)
