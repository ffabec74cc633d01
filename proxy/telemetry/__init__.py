"""Telemetry: traces (OTLP), metrics (Prometheus), access logs, wired into the gateway at three seams.

- `wrap_pipeline(handler)`: the outermost handler; starts the request span, counts in-flight work.
- `bind_stage` / `bind_checks` / `wrap_router`: compose()'s binders when tracing is on (marks for the
  stage spans, no extra frames); None (plain binding) when off.
- `attempt_hook`: a router attempt scope (attempt span, traceparent upstream, attempt metrics).
- `observe(call)`: a Gateway observer; runs after the last byte: ends spans, records metrics, logs.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Mapping
from types import TracebackType

from proxy.config import Config, Target
from proxy.context import ChatCall, Reply
from proxy.errors import ProxyError
from proxy.pipeline import CheckBinder, Handler, StageBinder
from proxy.providers.base import WireRequest
from proxy.telemetry import facts
from proxy.telemetry.logging import log_access
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.trace_record import AttemptTrace
from proxy.telemetry.tracing import Tracing, resolve

TRACE_HEADERS = ("traceparent", "tracestate")


def _code(exc: BaseException) -> str:
    if isinstance(exc, ProxyError):
        return exc.code or exc.type
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "internal_error"


class Telemetry:
    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        tc = config.telemetry
        settings = resolve(tc.tracing, env)
        types = {name: p.type for name, p in config.providers.items()}
        self.tracing: Tracing | None = Tracing(settings, types) if settings is not None else None
        self.metrics: Metrics | None = Metrics(m.name for m in config.models) if tc.metrics.enabled else None
        self.access_log = tc.logs.access_log
        self.metrics_key = tc.metrics.key
        self.allow_from = [ipaddress.ip_network(c, strict=False) for c in tc.metrics.allow_from]
        self.attempt_hook = AttemptHook(self)
        if self.metrics is not None:
            self.metrics.watch_tracing(self.tracing)

    @property
    def bind_stage(self) -> StageBinder | None:
        """compose()'s binders: a span per stage when tracing is on; None (plain binding) when off."""
        return self.tracing.bind_stage if self.tracing is not None else None

    @property
    def bind_checks(self) -> CheckBinder | None:
        return self.tracing.bind_checks if self.tracing is not None else None

    def wrap_router(self, router: Handler) -> Handler:
        """Tracing on: the router's entry ends the last stage's span (a mark, no extra frame)."""
        return self.tracing.mark_router(router) if self.tracing is not None else router

    def watch_router(self, router: object) -> None:
        """Breaker and probe state as gauges, read from the router's health at scrape time."""
        if self.metrics is not None:
            self.metrics.watch_health(getattr(router, "health", None))

    def wrap_pipeline(self, inner: Handler) -> Handler:
        tracing, metrics = self.tracing, self.metrics

        async def run(call: ChatCall) -> Reply:
            if metrics is not None:
                metrics.started(call)
            if tracing is not None:
                tracing.start_request(call)
            try:
                reply = await inner(call)
            except BaseException as e:
                call.error_code = _code(e)
                if tracing is not None:
                    tracing.raised(call, e)
                raise
            if tracing is not None:
                tracing.returned(call, reply)
            if reply.chunks is not None and metrics is not None:
                metrics.stream_started(call)
            return reply

        return run

    def observe(self, call: ChatCall) -> None:
        """Gateway observer: the call is finished (for a stream, its last byte went out)."""
        latency = time.monotonic() - call.started
        o = facts.outcome(call)
        if self.tracing is not None:
            self.tracing.end_request(call, o)
        if self.metrics is not None:
            self.metrics.finished(call, latency, o)
        if self.access_log:
            log_access(call, latency, o)

    def may_scrape(self, remote: str | None, credential: str | None) -> bool | None:
        """True: open network or the metrics key. None: ask the authenticator (the master key may)."""
        if remote:
            try:
                ip = ipaddress.ip_address(remote.split("%", 1)[0])
            except ValueError:
                ip = None
            if ip is not None:
                mapped = getattr(ip, "ipv4_mapped", None)
                ip = mapped or ip
                if any(ip.version == n.version and ip in n for n in self.allow_from):
                    return True
        if credential and self.metrics_key and hmac.compare_digest(credential.encode(), self.metrics_key.encode()):
            return True
        return None

    async def start(self) -> None:
        """App startup: start the span exporter process (tracing on only)."""
        if self.tracing is not None:
            await self.tracing.start()

    async def close(self) -> None:
        if self.tracing is not None:
            await self.tracing.shutdown()


class _Attempt:
    """One upstream attempt: its span (parent of the upstream's own spans via traceparent) and metrics."""

    __slots__ = ("call", "hook", "span", "target", "wire")

    def __init__(self, hook: AttemptHook, call: ChatCall, target: Target, wire: WireRequest) -> None:
        self.hook, self.call, self.target, self.wire = hook, call, target, wire
        self.span: AttemptTrace | None = None

    def __enter__(self) -> None:
        call, wire, tracing = self.call, self.wire, self.hook.tracing
        if tracing is not None:
            self.span = tracing.start_attempt(call, self.target, wire)
            if self.span is not None:     # sampled; unsampled passes the client's context on as is
                return
        if "traceparent" in call.headers:     # tracing off: pass the client's trace context through
            wire.headers = {**wire.headers, **{h: call.headers[h] for h in TRACE_HEADERS if h in call.headers}}

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        metrics = self.hook.metrics
        if metrics is not None:
            metrics.attempt(self.target.provider, "ok" if exc is None else _code(exc))
        if self.span is not None and self.hook.tracing is not None:
            self.hook.tracing.end_attempt(self.span, self.call, exc)


class AttemptHook:
    """The router's attempt scope (`Router.attempt_scopes`): wraps one attempt, after `to_wire`."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.tracing, self.metrics = telemetry.tracing, telemetry.metrics

    def __call__(self, call: ChatCall, target: Target, wire: WireRequest) -> _Attempt:
        return _Attempt(self, call, target, wire)


__all__ = ["AttemptHook", "Metrics", "Telemetry", "Tracing"]
