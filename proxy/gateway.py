"""The running gateway's parts, shared by every ingress: config, backends, router, auth, pipeline."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from proxy.config import Config
from proxy.context import ChatCall
from proxy.pipeline import Handler
from proxy.pipeline.auth import Authenticator
from proxy.routing.backends import Backend
from proxy.routing.router import Router

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
    accepting: bool = True

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
