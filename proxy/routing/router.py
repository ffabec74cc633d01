"""The router: the pipeline's innermost handler. Orders targets, makes attempts, retries, falls back.

Fallback happens only before the first byte reaches the client: a stream is handed out only once its
first upstream chunk has arrived, and after that a failure ends the stream instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import backoff

from proxy.config import Config, ModelConfig, Target
from proxy.context import ChatCall, Reply
from proxy.errors import (
    ProviderAuthFailed,
    ProviderKeyMissing,
    ProxyError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.providers.base import WireRequest
from proxy.redact import RedactingStream, Redactor
from proxy.routing.backends import Backend
from proxy.routing.deadlines import Deadlines
from proxy.routing.health import Health, TargetState
from proxy.routing.models import ModelCatalog
from proxy.routing.plan import Planner
from proxy.routing.retry_budget import RetryBudget
from proxy.streaming.relay import relay
from proxy.upstream import UpstreamResponse

# Wraps one upstream attempt (tracing, metrics). It may replace `wire.headers` with a copy plus
# propagation headers; it must never mutate the dict it was given (providers share it).
AttemptScope = Callable[[ChatCall, Target, WireRequest], AbstractContextManager[object]]

SAME_TARGET_RETRY = frozenset({408, 409, 500, 502, 503})


class _Throttled(Exception):
    """Every target left is cooling down after a provider's 429 and one reopens soon enough: wait, retry."""

    def __init__(self, error: ProxyError, sleep: float) -> None:
        super().__init__(error.message)
        self.error, self.sleep = error, sleep


def _retry_same_target(e: Exception) -> bool:
    """backoff's give-up test: retry the same target only on connection errors and 5xx/408/409.
    429, timeouts, context-length errors and refused credentials move on to the next target instead."""
    return not (isinstance(e, UpstreamError) and e.retryable and e.status in SAME_TARGET_RETRY
                and not isinstance(e, UpstreamTimeout | ProviderAuthFailed))


class Router:
    def __init__(self, config: Config, backends: dict[str, Backend]) -> None:
        self.models = ModelCatalog(config.models)
        self.backends = backends
        self.routing = config.routing
        self.health = Health(config.routing.breaker)
        self.planner = Planner(self.models, self.health)
        self.attempt_scopes: list[AttemptScope] = []
        self.deadlines = Deadlines()          # one sweeping timer for every exchange in flight
        self.redactor = Redactor.from_config(config)   # upstream messages lose every secret here
        self.retry_budget = RetryBudget(config.routing.retry_budget)
        r = config.routing
        # The first try of a target, and the first routing pass, run bare: backoff's wrapper costs ~7% of
        # a request's CPU, so it is entered only once something failed (the common case pays nothing).
        # Retries after the first: exponential with full jitter, `retries` more tries in all.
        self._retry_target = backoff.on_exception(
            backoff.expo, UpstreamError, max_tries=r.retries, giveup=_retry_same_target,
            jitter=backoff.full_jitter, factor=r.backoff_base * 2, max_value=r.backoff_max, logger=None,
        )(self._tracked_attempt)
        # Upstream 429: wait (jittered, within routing.rate_limit_wait and the deadline) for a target's
        # Retry-After cooldown to end, then route again; _Throttled carries the sleep it computed.
        self._reroute = backoff.on_exception(backoff.runtime, _Throttled, value=lambda e: e.sleep, jitter=None,
                                             logger=None)(self._route_once)

    async def _retry(self, call: ChatCall, target: Target) -> Reply:
        """After a first failure worth retrying on the same target: wait, then retry with backoff."""
        await asyncio.sleep(random.uniform(0, self.routing.backoff_base))    # the first back-off wait
        return await self._retry_target(call, target)

    def resolve(self, name: str) -> ModelConfig:
        return self.models.resolve(name)

    async def __call__(self, call: ChatCall) -> Reply:
        plan = call.plan
        if plan is None:                 # a pipeline composed without the plan stage (tests, tools)
            plan = call.plan = self.planner.plan(call)
        targets = plan.targets
        # Flat on purpose: every frame on this stack is resumed at each wait for the provider.
        try:
            return await self._route_once(call, targets)
        except _Throttled as t:
            sleep = t.sleep
        await asyncio.sleep(sleep)
        return await self._reroute(call, targets)

    async def _route_once(self, call: ChatCall, targets: list[Target]) -> Reply:
        last: ProxyError | None = None
        window_above: int | None = None      # after a context-length error: only larger windows
        now = time.monotonic()
        for target in targets:
            if window_above is not None and (target.context_window or 0) <= window_above:
                continue
            if not self.health.available(target, now):
                wait = max(1, math.ceil(self.health.of(target).open_until - now))
                if self.health.of(target).throttled and (last is None or isinstance(last, Unavailable)):
                    last = UpstreamError(f"Rate limit reached for model '{call.model}': '{target.provider}/"
                                         f"{target.model}' is cooling down after the provider's 429.",
                                         status=429, type="rate_limit_error", code="rate_limit_exceeded",
                                         retry_after=wait)
                    continue
                last = last or Unavailable(f"No healthy target for model '{call.model}': "
                                           f"'{target.provider}/{target.model}' is cooling down.",
                                           headers={"retry-after": str(wait)})
                continue
            try:
                try:
                    reply = await self._tracked_attempt(call, target)
                except UpstreamError as e:
                    if (self.routing.retries < 1 or _retry_same_target(e)
                            or not self.retry_budget.take(st := self.health.of(target))):
                        raise
                    try:
                        reply = await self._retry(call, target)
                    finally:
                        self.retry_budget.give(st)
                call.response_headers["x-llm-attempts"] = str(call.attempts)
                return reply
            except UpstreamError as e:
                last = e
                if e.code == "context_length_exceeded":
                    window_above = target.context_window or 0
                    continue
                if not e.retryable:
                    break
        if last is None:
            last = Unavailable(f"No target of model '{call.model}' could take the request.")
        last.headers["x-llm-attempts"] = str(call.attempts)
        if call.target is not None:            # which provider failed, on the error answer too
            last.headers.setdefault("x-llm-provider", call.target.provider)
            last.headers.setdefault("x-llm-upstream-model", call.target.model)
        if (last.status == 429 and last.code != "insufficient_quota" and not last.final
                and (sleep := self._throttle_sleep(call, targets)) is not None):
            raise _Throttled(last, sleep)
        raise last

    def _throttle_sleep(self, call: ChatCall, targets: list[Target]) -> float | None:
        """Seconds to wait (jittered) for the first 429-cooled target to reopen, if that fits within
        routing.rate_limit_wait (per request) and the request's deadline; else None: answer 429 now."""
        now = time.monotonic()
        reopen = [st.open_until for t in targets if (st := self.health.of(t)).throttled and st.open_until > now]
        if not reopen:
            return None
        wait = min(reopen) - now
        waited = call.throttle_waited
        deadline = call.started + self.backends[targets[0].provider].config.timeouts.total
        budget = min(self.routing.rate_limit_wait - waited, deadline - now)
        if wait > budget:
            return None
        sleep = min(wait + random.uniform(0.01, max(0.05, wait * 0.1)), budget)
        call.throttle_waited = waited + sleep
        return sleep

    async def _tracked_attempt(self, call: ChatCall, target: Target) -> Reply:
        """One try, with the target's breaker and in-flight count kept up to date."""
        st = self.health.of(target)
        started = time.monotonic()
        self.health.begin(st, started)
        backend = self.backends[target.provider]
        call.attempts += 1
        call.target = target
        try:
            if backend.config.api_key_missing:       # its ${VAR} was unset at start: nothing to send
                raise ProviderKeyMissing(backend.name, backend.config.api_key_missing)
            prepare = getattr(backend.provider, "prepare", None)
            if prepare is not None:
                await prepare(target, backend.transport)   # e.g. fetch a model's supported params (cached)
            if call.endpoint == "completions" and not getattr(backend.provider, "legacy_completions", False):
                raise UpstreamError(f"Provider '{target.provider}' has no legacy completions endpoint; use "
                                    "/v1/chat/completions.", status=400, type="invalid_request_error",
                                    code="unsupported_endpoint", param="model")   # the next target may have one
            wire = backend.provider.to_wire(call, target)
            scopes = self.attempt_scopes
            if not scopes:
                reply = await self._send(call, target, backend, wire)
            elif len(scopes) == 1:                   # the usual one (telemetry): no ExitStack
                with scopes[0](call, target, wire):
                    reply = await self._send(call, target, backend, wire)
            else:
                with contextlib.ExitStack() as stack:
                    for scope in scopes:
                        stack.enter_context(scope(call, target, wire))
                    reply = await self._send(call, target, backend, wire)
        except UpstreamError as e:
            if isinstance(e, ProviderAuthFailed):
                e.naming(backend.name)
            self._account_failure(st, e)
            raise
        except BaseException:
            self.health.neutral(st)
            self.health.end(st)
            raise
        self.health.success(st, (time.monotonic() - started) * 1000)
        if reply.chunks is None:
            self.health.end(st)
        else:
            def release(_call: ChatCall) -> None:     # in flight until the last byte
                self.health.end(st)
            call.on_finish(release)
        return reply

    def _account_failure(self, st: TargetState, e: UpstreamError) -> None:
        self.health.end(st)
        if e.status == 429:
            self.health.failure(st, e.message, cooldown=e.retry_after if e.retry_after is not None else 1.0)
        elif isinstance(e, ProviderAuthFailed):
            self.health.neutral(st)         # the gateway's configuration, not the target's health
        elif e.status >= 500 or e.status in (408, 409):
            self.health.failure(st, e.message)
        else:
            self.health.neutral(st)

    async def _send(self, call: ChatCall, target: Target, backend: Backend, wire: WireRequest) -> Reply:
        headers = {"x-llm-provider": backend.name, "x-llm-upstream-model": target.model}
        if wire.dropped:
            headers["x-llm-dropped-params"] = ",".join(wire.dropped)
        call.response_headers.update(headers)
        t = backend.config.timeouts
        first_byte_limit = target.ttft_timeout or t.first_byte
        loop = asyncio.get_running_loop()
        deadline = call.started + t.total
        if deadline - loop.time() <= 0:
            raise UpstreamTimeout("the request's overall deadline passed", retryable=False)
        # One deadline for the whole exchange before the first byte goes out, moved per phase: response
        # headers within first_byte; a body within idle; a stream's first chunk within first_byte.
        resp: UpstreamResponse | None = None
        phase = "sent no response"
        try:
            with self.deadlines.after(max(0.0, min(first_byte_limit, deadline - loop.time()))) as timer:
                resp = await backend.transport.send(wire)
                if resp.status >= 400 or not call.stream:
                    phase = "stalled sending its response body"
                    timer.reschedule(loop.time() + max(0.0, min(t.idle, deadline - loop.time())))
                    body = await resp.read()
                    if resp.status >= 400:
                        raise backend.provider.error_from_wire(resp.status, body, resp.headers)
                    out, call.usage = backend.provider.from_wire(resp.status, body, call, target)
                    return Reply(body=out, headers=headers, native=wire.native)
                phase = "sent no first chunk"
                timer.reschedule(loop.time() + max(0.0, min(first_byte_limit, deadline - loop.time())))
                translator = RedactingStream(backend.provider.new_stream(call, target), self.redactor)
                chunks = resp.iter_chunks().__aiter__()
                first = await anext(chunks)
        except TimeoutError:
            if resp is not None:
                resp.release()
            raise UpstreamTimeout(f"provider '{backend.name}' {phase} within the time allowed "
                                  f"(first byte {first_byte_limit:g}s, idle {t.idle:g}s)") from None
        except StopAsyncIteration:
            if resp is not None:
                resp.release()
            raise UpstreamError(f"provider '{backend.name}' closed the stream before sending anything") from None
        except UpstreamError as e:
            if resp is not None:
                resp.release()          # an error before the stream was handed out: the connection is done
            raise self.redactor.error(e) from None     # before any scope, log or ledger sees it
        except BaseException:
            if resp is not None:
                resp.release()
            raise
        return Reply(chunks=relay(call, resp, chunks, first, translator, t.idle, deadline),
                     headers=headers, content_type="text/event-stream", native=wire.native)
