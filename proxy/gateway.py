"""The running gateway's parts, shared by every ingress, and the call's one end.

Every ingress (REST, Responses, Messages, GraphQL, jobs, batches) does the same three things:
`begin(call)` when it takes the call, `await pipeline(call)` for the reply, and `end(call)` once the
last byte went out or whatever else ended it. `end` is synchronous and idempotent, so a handler's
`finally` runs it even while its task is being cancelled (a client that hung up): the part that must
wait (an estimate counted in a thread, a budget settled in Redis) goes on in a task the gateway owns and
waits for on shutdown, before the ledger closes. The order is fixed here:

    price -> record -> settle (the accounting stage)  ->  release (slots, in-flight counts)  ->  observe
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.config import Config
from proxy.context import (
    CLIENT_CLOSED,
    CLIENT_GONE,
    COMPLETED,
    ERROR,
    REFUSED,
    TIMEOUT,
    UPSTREAM_ERROR,
    ChatCall,
)
from proxy.errors import ProxyError, Unavailable
from proxy.pipeline import Handler
from proxy.pipeline.auth import Authenticator
from proxy.routing.backends import Backend
from proxy.routing.router import Router

if TYPE_CHECKING:
    from proxy.cost.accounting import Accounting
    from proxy.ingress.responses_store import ResponsesStore
    from proxy.keyservice import KeyStore
    from proxy.pipeline.accounting import AccountingStage
    from proxy.pipeline.cache import CacheStage
    from proxy.pipeline.ratelimit import RateLimitStage
    from proxy.telemetry import Telemetry

log = logging.getLogger("proxy")

ReadyCheck = Callable[[], Awaitable[bool]]
Observer = Callable[[ChatCall], Awaitable[None] | None]
EndStep = Callable[[ChatCall], Awaitable[None] | None]


@dataclass(slots=True)
class Gateway:
    config: Config
    backends: dict[str, Backend]
    router: Router
    auth: Authenticator
    pipeline: Handler
    ready_checks: dict[str, ReadyCheck] = field(default_factory=dict)
    observers: list[Observer] = field(default_factory=list)     # run for every ended call (logs, metrics)
    accepting: bool = True               # False once SIGTERM arrived: /ready fails, new calls get 503
    inflight: int = 0                    # calls begun and not yet ended (drain waits on it)
    cache: CacheStage | None = None      # the response cache stage (admin invalidation, stats)
    keys: KeyStore | None = None         # the ledger, virtual key lookup, audit log (admin API, CLI)
    telemetry: Telemetry | None = None   # traces, metrics, access log (GET /metrics reads it)
    accounting: Accounting | None = None  # prices, usage ledger writer, budgets, alerts (/v1/usage, /admin/budgets)
    accounting_stage: AccountingStage | None = None   # price -> record -> settle at each call's end
    limits: RateLimitStage | None = None  # rate limits and quotas (GET /v1/quota, Redis client lifecycle)
    responses: ResponsesStore | None = None   # stored Responses API conversations (previous_response_id)
    open: dict[ChatCall, asyncio.Task | None] = field(default_factory=dict)   # begun calls -> their task
    ending: set[asyncio.Task] = field(default_factory=set)   # ends still settling (awaited on shutdown)

    def begin(self, call: ChatCall) -> None:
        """The ingress took the call: from here on `end(call)` must run, exactly once."""
        if not self.accepting:
            raise Unavailable("The server is shutting down; retry on another replica.",
                              headers={"Connection": "close", "Retry-After": "1"})
        self.inflight += 1
        self.open[call] = asyncio.current_task()

    def end(self, call: ChatCall) -> None:
        """The call's one end. Never raises, never awaits: safe in a `finally` under cancellation."""
        if call.ended:
            return
        call.ended = True
        if self.open.pop(call, False) is not False:
            self.inflight -= 1
        if call.ended_by is None:
            call.ended_by = _ended_by(call)
        if call.ended_by == CLIENT_GONE:
            call.status = CLIENT_CLOSED
        steps: list[EndStep] = []
        if self.accounting_stage is not None:
            steps.append(self.accounting_stage.end)
        steps += call.take_finalizers()
        steps += self.observers
        self._run(call, steps, 0)

    def _run(self, call: ChatCall, steps: list[EndStep], i: int) -> None:
        """Run steps in order, synchronously while they finish at once; the rest in an owned task."""
        while i < len(steps):
            try:
                res = steps[i](call)
            except Exception:
                log.exception("end step failed for %s", call.request_id)
                res = None
            i += 1
            if res is not None:
                task = asyncio.ensure_future(self._resume(call, steps, i, res))
                self.ending.add(task)
                task.add_done_callback(self.ending.discard)
                return

    async def _resume(self, call: ChatCall, steps: list[EndStep], i: int, pending: Awaitable[None]) -> None:
        try:
            await pending
        except Exception:
            log.exception("end step failed for %s", call.request_id)
        while i < len(steps):
            try:
                res = steps[i](call)
                if res is not None:
                    await res
            except Exception:
                log.exception("end step failed for %s", call.request_id)
            i += 1

    async def settled(self, within: float = 10.0) -> None:
        """Wait for every end still settling (shutdown: before the ledger closes)."""
        if self.ending:
            await asyncio.wait(list(self.ending), timeout=within)

    async def call_whole(self, call: ChatCall) -> tuple[int, bytes]:
        """Run a call to its end without HTTP (async jobs, batch lines, GraphQL): (status, body), the body
        being the reply's JSON, or the error envelope. A stream's chunks are consumed and joined."""
        self.begin(call)
        try:
            reply = await self.pipeline(call)
            call.status = reply.status
            if reply.chunks is None:
                return reply.status, reply.body or b""
            parts = [data async for data in reply.chunks]
            if call.first_byte_at is None and parts:
                call.first_byte_at = call.started
            return reply.status, b"".join(parts)
        except ProxyError as e:
            call.status, call.error, call.error_code = e.status, e.message, e.code
            return e.status, e.body()
        except asyncio.CancelledError:
            call.status = CLIENT_CLOSED
            raise
        except Exception:
            log.exception("call %s failed", call.request_id)
            call.status, call.error = 500, "internal error"
            return 500, ProxyError("The server had an error while processing your request.").body()
        finally:
            self.end(call)

    async def finish(self, call: ChatCall) -> None:
        """End the call and wait for its end to settle (tests and tools that need the event written)."""
        self.end(call)
        await self.settled()


def _ended_by(call: ChatCall) -> str:
    if call.status == CLIENT_CLOSED:
        return CLIENT_GONE
    if call.error is None and 0 < call.status < 400:
        return COMPLETED
    if call.attempts:
        return TIMEOUT if call.error_code == "upstream_timeout" else UPSTREAM_ERROR
    return REFUSED if 0 < call.status < 500 else ERROR


GATEWAY = web.AppKey("gateway", Gateway)
