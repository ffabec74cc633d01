"""OTLP traces: one SERVER span per request, a child span per pipeline stage and per upstream attempt.

Spans are carried explicitly on the call (`call.extras`), never through the ambient context, so a stream
relayed after the handler returned still ends its spans at the right time. The tracer provider is ours
(not the global one): each app owns its exporter thread and shuts it down on cleanup. Export runs on the
BatchSpanProcessor's thread with a bounded queue: a slow or dead collector drops spans, never requests.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import orjson
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy import __version__
from proxy.config import TracingConfig
from proxy.context import ChatCall, Reply
from proxy.pipeline import Handler, Stage
from proxy.telemetry import facts

SPAN, CTX = "otel.span", "otel.ctx"
CONTENT_LIMIT = 64 * 1024        # bytes of prompt / completion kept on a span when record_content is on
_EMPTY = Context()


class TracingSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`telemetry.tracing` merged with the standard OTEL_* variables (config wins)."""

    endpoint: str          # "" means: let the exporter read OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself
    protocol: str
    service_name: str
    sample_ratio: float
    record_content: bool
    headers: dict[str, str]
    max_queue_size: int
    export_timeout: float


def resolve(cfg: TracingConfig, env: Mapping[str, str] | None = None) -> TracingSettings | None:
    """None when tracing is off: no endpoint anywhere, OTEL_SDK_DISABLED, or OTEL_TRACES_EXPORTER=none."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER", "") == "none":
        return None
    if not (cfg.endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    protocol = (cfg.protocol or env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    ratio = cfg.sample_ratio
    if ratio is None:
        sampler = env.get("OTEL_TRACES_SAMPLER", "")
        ratio = 0.0 if sampler in ("always_off", "parentbased_always_off") else 1.0
        if sampler in ("traceidratio", "parentbased_traceidratio"):
            try:
                ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1"))
            except ValueError:
                ratio = 1.0
    return TracingSettings(
        endpoint=cfg.endpoint, protocol="grpc" if protocol == "grpc" else "http/protobuf",
        service_name=cfg.service_name or env.get("OTEL_SERVICE_NAME") or "llm-service",
        sample_ratio=min(max(ratio, 0.0), 1.0), record_content=cfg.record_content, headers=dict(cfg.headers),
        max_queue_size=max(cfg.max_queue_size, 1), export_timeout=cfg.export_timeout)


def make_exporter(s: TracingSettings) -> SpanExporter:
    headers = s.headers or None
    if s.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        return GrpcExporter(endpoint=s.endpoint or None, headers=headers, timeout=s.export_timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    url = s.endpoint
    if url and not url.rstrip("/").endswith("/v1/traces"):
        url = url.rstrip("/") + "/v1/traces"      # config takes a base URL, like OTEL_EXPORTER_OTLP_ENDPOINT
    return HttpExporter(endpoint=url or None, headers=headers, timeout=s.export_timeout)


def stage_name(stage: Stage) -> str:
    name = getattr(stage, "name", None)
    if isinstance(name, str) and name:
        return name
    cls = type(stage).__name__.removesuffix("Stage") or type(stage).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls).lower()


def _fail(span: Span, exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError):
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
        span.set_attribute("error.type", "cancelled")
        return
    span.set_status(Status(StatusCode.ERROR, getattr(exc, "message", None) or type(exc).__name__))
    span.set_attribute("error.type", getattr(exc, "code", None) or type(exc).__name__)


class Tracing:
    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None,
                 provider_types: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        resource = Resource.create({"service.name": settings.service_name, "service.version": __version__})
        self.provider = TracerProvider(resource=resource,
                                       sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter or make_exporter(settings), max_queue_size=settings.max_queue_size,
            max_export_batch_size=min(512, settings.max_queue_size), schedule_delay_millis=500,
            export_timeout_millis=settings.export_timeout * 1000))
        self.tracer = self.provider.get_tracer("llm-service", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.provider_types = dict(provider_types or {})
        self.record_content = settings.record_content

    # -- the request span ------------------------------------------------------------------------------

    def start_request(self, call: ChatCall) -> None:
        parent = self.propagator.extract(call.headers) if "traceparent" in call.headers else _EMPTY
        start = time.time_ns() - int((time.monotonic() - call.started) * 1e9)
        op = facts.operation(call)
        attrs: dict[str, Any] = {"gen_ai.operation.name": op, "gen_ai.request.model": call.model,
                                 "llm_service.request_id": call.request_id, "llm_service.ingress": call.ingress}
        body = call.body
        for key, attr in (("max_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
                          ("top_p", "gen_ai.request.top_p")):
            v = body.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                attrs[attr] = v
        if call.stream:
            attrs["gen_ai.request.stream"] = True
        if self.record_content:
            attrs["gen_ai.input.messages"] = orjson.dumps(body.get("messages")).decode()[:CONTENT_LIMIT]
        span = self.tracer.start_span(f"{op} {call.model}", context=parent, kind=SpanKind.SERVER,
                                      start_time=start, attributes=attrs)
        call.extras[SPAN] = span
        call.extras[CTX] = set_span_in_context(span)

    def watch(self, call: ChatCall, reply: Reply) -> None:
        """Collect finish reasons and the response model from what goes out, by a byte scan."""
        if reply.chunks is not None:
            reply.chunks = self._watch_stream(call, reply.chunks)
        elif reply.body:
            reasons: list[str] = []
            facts.scan_finish_reasons(reply.body, reasons)
            call.extras["otel.finish"] = reasons
            call.extras["otel.model"] = facts.scan_model(reply.body)
            if self.record_content:
                call.extras["otel.output"] = _output_messages(reply.body)

    async def _watch_stream(self, call: ChatCall, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        reasons: list[str] = []
        call.extras["otel.finish"] = reasons
        kept: list[bytes] | None = [] if self.record_content else None
        model: str | None = None
        try:
            async for data in chunks:
                if model is None:
                    model = call.extras["otel.model"] = facts.scan_model(data)
                facts.scan_finish_reasons(data, reasons)
                if kept is not None and sum(map(len, kept)) < 4 * CONTENT_LIMIT:
                    kept.append(data)
                yield data
        finally:
            if kept is not None:
                call.extras["otel.output"] = _stream_output(b"".join(kept))
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def end_request(self, call: ChatCall) -> None:
        extras = call.extras
        span: Span | None = extras.pop(SPAN, None)
        extras.pop(CTX, None)
        if span is None:
            return
        if span.is_recording():
            span.update_name(f"{facts.operation(call)} {call.model}")
            span.set_attributes(self._result_attributes(call))
            status = facts.status(call)
            span.set_attribute("http.response.status_code", status)
            if status >= 400 or call.error:
                span.set_attribute("error.type", facts.error_code(call) or str(status))
                if status >= 500 or call.error:
                    span.set_status(Status(StatusCode.ERROR, call.error or str(status)))
        span.end()

    def _result_attributes(self, call: ChatCall) -> dict[str, Any]:
        extras = call.extras
        attrs: dict[str, Any] = {"gen_ai.request.model": call.model, "llm_service.attempts": call.attempts}
        provider = facts.provider_of(call)
        if provider:
            attrs["gen_ai.provider.name"] = facts.provider_name(self.provider_types.get(provider, provider))
            attrs["llm_service.provider"] = provider
        model = extras.get("otel.model") or facts.upstream_model(call)
        if model:
            attrs["gen_ai.response.model"] = model
        u = call.usage
        if u is not None:
            attrs["gen_ai.usage.input_tokens"] = u.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = u.completion_tokens
            if u.cached_tokens:
                attrs["gen_ai.usage.cache_read.input_tokens"] = u.cached_tokens
        reasons = facts.finish_reasons(call) or extras.get("otel.finish")
        if reasons:
            attrs["gen_ai.response.finish_reasons"] = list(reasons)
        ttft = facts.ttft_seconds(call)
        if ttft is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = ttft
        cost, cache, kid = facts.cost(call), facts.cache_status(call), facts.key_id(call)
        if cost is not None:
            attrs["llm_service.cost_usd"] = cost
        if cache is not None:
            attrs["llm_service.cache"] = cache
        if kid is not None:
            attrs["llm_service.key_id"] = kid
        out = extras.pop("otel.output", None)
        if out:
            attrs["gen_ai.output.messages"] = out
        return attrs

    # -- stage and attempt spans -----------------------------------------------------------------------

    def bind_stage(self, stage: Stage, nxt: Handler) -> Handler:
        """compose()'s binder when tracing is on: a span from entering the stage until it hands on (or
        rejects), so stage spans are siblings under the request span and show each stage's own time."""
        name, tracer = "pipeline." + stage_name(stage), self.tracer

        async def run(call: ChatCall) -> Reply:
            ctx = call.extras.get(CTX)
            if ctx is None:
                return await stage(call, nxt)
            span = tracer.start_span(name, context=ctx)
            ended = False

            async def handoff(c: ChatCall) -> Reply:
                nonlocal ended
                if not ended:
                    ended = True
                    span.end()
                return await nxt(c)

            try:
                return await stage(call, handoff)
            except BaseException as e:
                if not ended:
                    _fail(span, e)
                raise
            finally:
                if not ended:
                    span.end()

        run.__qualname__ = f"{type(stage).__name__}.traced"
        return run

    def start_attempt(self, call: ChatCall, provider: str, model: str) -> Span | None:
        ctx = call.extras.get(CTX)
        if ctx is None:
            return None
        op = facts.operation(call)
        return self.tracer.start_span(f"{op} {model}", context=ctx, kind=SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": op, "gen_ai.request.model": model, "llm_service.provider": provider,
            "gen_ai.provider.name": facts.provider_name(self.provider_types.get(provider, provider)),
            "llm_service.attempt": call.attempts})

    def trace_headers(self, span: Span) -> dict[str, str]:
        """W3C traceparent (and tracestate) naming `span`, for the upstream request."""
        headers: dict[str, str] = {}
        self.propagator.inject(headers, context=set_span_in_context(span))
        return headers

    def end_attempt(self, span: Span, call: ChatCall, exc: BaseException | None) -> None:
        if exc is not None:
            _fail(span, exc)
            span.end()
            return
        if call.stream:
            call.on_finish(lambda c: self._end_streamed_attempt(span, c))   # after the last byte
            return
        self._attempt_result(span, call)
        span.end()

    def _end_streamed_attempt(self, span: Span, call: ChatCall) -> None:
        if call.error:
            span.set_status(Status(StatusCode.ERROR, call.error))
            span.set_attribute("error.type", facts.error_code(call) or "stream_error")
        self._attempt_result(span, call)
        span.end()

    def _attempt_result(self, span: Span, call: ChatCall) -> None:
        u = call.usage
        if u is not None and span.is_recording():
            span.set_attributes({"gen_ai.usage.input_tokens": u.prompt_tokens,
                                 "gen_ai.usage.output_tokens": u.completion_tokens})

    # -- lifecycle --------------------------------------------------------------------------------------

    async def flush(self, within: float = 10.0) -> bool:
        """Export what is queued (tests, shutdown). Runs on a thread: the exporter may be on this loop."""
        return await asyncio.to_thread(self.provider.force_flush, int(within * 1000))

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)


def _output_messages(body: bytes) -> str | None:
    """record_content only: the assistant messages of a whole JSON answer."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return None
    msgs = [c.get("message") for c in choices if isinstance(c, dict)]
    return orjson.dumps(msgs).decode()[:CONTENT_LIMIT]


def _stream_output(raw: bytes) -> str | None:
    """record_content only: the streamed text, joined from the SSE deltas."""
    parts: list[str] = []
    for line in raw.splitlines():
        if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
            continue
        try:
            obj = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        for c in obj.get("choices") or [] if isinstance(obj, dict) else []:
            delta = c.get("delta") if isinstance(c, dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                parts.append(delta["content"])
    text = "".join(parts)
    return orjson.dumps([{"role": "assistant", "content": text}]).decode()[:CONTENT_LIMIT] if text else None
