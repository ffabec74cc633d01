"""OTLP traces: one SERVER span per request, a child span per pipeline stage and per upstream attempt.

Spans are small records (`SpanRecord`) carried explicitly on the call (`call.extras`), never through the
ambient context, so a stream relayed after the handler returned still ends its spans at the right time.
Sampling is decided once per trace (parent-based, then a trace-id ratio like TraceIdRatioBased); an
unsampled request records nothing. Finished spans are buffered and handed in batches to the exporter
subprocess (otlp_export), which speaks OTLP through the official exporter: a request pays a few
microseconds per span, and a slow or dead collector drops spans, never requests.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from random import getrandbits
from typing import Any

import orjson

from proxy.context import ChatCall, Reply
from proxy.pipeline import Handler, Stage
from proxy.telemetry import facts
from proxy.telemetry.otlp_export import (
    KIND_CLIENT,
    KIND_INTERNAL,
    KIND_SERVER,
    STATUS_ERROR,
    ExportProcess,
    ExportSettings,
    SpanRecord,
    make_exporter,
)
from proxy.telemetry.trace_settings import TracingSettings, parse_traceparent, resolve

SPAN = "otel.span"
TAP = "relay_tap"                # call.extras: the relay appends the client-bound bytes here (proxy/streaming/relay)
CONTENT_LIMIT = 64 * 1024        # bytes of prompt / completion kept on a span when record_content is on
BATCH = 512                      # spans per hand-off to the exporter process
DELAY = 0.25                     # seconds a finished span may wait for its batch

__all__ = ["SpanRecord", "Tracing", "TracingSettings", "make_exporter", "parse_traceparent", "resolve"]


def stage_name(stage: Stage) -> str:
    name = getattr(stage, "name", None)
    if isinstance(name, str) and name:
        return name
    cls = type(stage).__name__.removesuffix("Stage") or type(stage).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls).lower()


def _fail(span: SpanRecord, exc: BaseException) -> None:
    attrs = span.attributes if span.attributes is not None else {}
    span.attributes = attrs
    span.status = STATUS_ERROR
    if isinstance(exc, asyncio.CancelledError):
        span.message = attrs["error.type"] = "cancelled"
        return
    span.message = getattr(exc, "message", None) or type(exc).__name__
    attrs["error.type"] = getattr(exc, "code", None) or type(exc).__name__


class Tracing:
    def __init__(self, settings: TracingSettings, provider_types: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        # TraceIdRatioBased: sampled when the trace id's low 64 bits are below ratio * 2**64.
        self._bound = round(settings.sample_ratio * (1 << 64))
        self.exporter = ExportProcess(ExportSettings(
            endpoint=settings.endpoint, protocol=settings.protocol, service_name=settings.service_name,
            headers=settings.headers, export_timeout=settings.export_timeout,
            max_queue_size=settings.max_queue_size))
        self.provider_types = dict(provider_types or {})
        self.record_content = settings.record_content
        self._buffer: list[SpanRecord] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def dropped(self) -> int:
        return self.exporter.dropped

    # -- recording and hand-off -------------------------------------------------------------------------

    def _finish(self, span: SpanRecord) -> None:
        buf = self._buffer
        buf.append(span)
        if len(buf) >= BATCH:
            self._hand_off()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(DELAY, self._hand_off)

    def _hand_off(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._buffer = self._buffer, []
        if batch:
            self.exporter.send(batch)

    def start(self) -> None:
        """Start the exporter process (app startup), so the first requests do not pay for it."""
        self.exporter.start()

    # -- the request span ------------------------------------------------------------------------------

    def _sample(self, call: ChatCall) -> tuple[str, int, bool, str] | None:
        """(trace id, parent span id, remote parent, tracestate) when this request is sampled."""
        header = call.headers.get("traceparent")
        parsed = parse_traceparent(header) if header else None
        if parsed is not None:
            if not parsed[2]:
                return None            # ParentBased: the client's decision holds
            return parsed[0], parsed[1], True, call.headers.get("tracestate", "").strip()
        bits = getrandbits(128) or 1
        if (bits & 0xFFFFFFFFFFFFFFFF) >= self._bound:
            return None
        return f"{bits:032x}", 0, False, ""

    def start_request(self, call: ChatCall) -> None:
        sampled = self._sample(call)
        if sampled is None:
            return
        trace_id, parent_id, remote, state = sampled
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
        if call.stream and TAP not in call.extras:
            call.extras[TAP] = []  # the relay's tap: read once at the end instead of a wrapper on every chunk
        call.extras[SPAN] = SpanRecord(
            name=f"{op} {call.model}", kind=KIND_SERVER, trace_id=trace_id, span_id=getrandbits(64) or 1,
            parent_id=parent_id, start_ns=start, attributes=attrs, remote_parent=remote, trace_state=state)

    def watch(self, call: ChatCall, reply: Reply) -> None:
        """Collect finish reasons and the response model from what goes out, by a byte scan."""
        if SPAN not in call.extras:
            return
        if reply.chunks is not None:
            if not call.attempts:        # not relayed from a provider (a cache replay): no tap, watch the chunks
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
        span: SpanRecord | None = call.extras.pop(SPAN, None)
        if span is None:
            return
        tap: list[bytes] | None = call.extras.get(TAP)
        if tap and "otel.finish" not in call.extras:      # a relayed stream: scan what went out, once
            raw = b"".join(tap)
            reasons: list[str] = []
            facts.scan_finish_reasons(raw, reasons)
            call.extras["otel.finish"], call.extras["otel.model"] = reasons, facts.scan_model(raw)
            if self.record_content:
                call.extras["otel.output"] = _stream_output(raw[:4 * CONTENT_LIMIT])
        span.name = f"{facts.operation(call)} {call.model}"
        attrs = span.attributes if span.attributes is not None else {}
        attrs.update(self._result_attributes(call))
        status = facts.status(call)
        attrs["http.response.status_code"] = status
        if status >= 400 or call.error:
            attrs["error.type"] = facts.error_code(call) or str(status)
            if status >= 500 or call.error:
                span.status, span.message = STATUS_ERROR, call.error or str(status)
        span.attributes = attrs
        span.end_ns = time.time_ns()
        self._finish(span)

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
        name, finish = "pipeline." + stage_name(stage), self._finish

        async def run(call: ChatCall) -> Reply:
            root: SpanRecord | None = call.extras.get(SPAN)
            if root is None:
                return await stage(call, nxt)
            span = SpanRecord(name=name, kind=KIND_INTERNAL, trace_id=root.trace_id, span_id=getrandbits(64) or 1,
                              parent_id=root.span_id, start_ns=time.time_ns(), trace_state=root.trace_state)

            async def handoff(c: ChatCall) -> Reply:
                if not span.end_ns:
                    span.end_ns = time.time_ns()
                    finish(span)
                return await nxt(c)

            try:
                return await stage(call, handoff)
            except BaseException as e:
                if not span.end_ns:
                    _fail(span, e)
                raise
            finally:
                if not span.end_ns:
                    span.end_ns = time.time_ns()
                    finish(span)

        run.__qualname__ = f"{type(stage).__name__}.traced"
        return run

    def start_attempt(self, call: ChatCall, provider: str, model: str) -> SpanRecord | None:
        root: SpanRecord | None = call.extras.get(SPAN)
        if root is None:
            return None
        op = facts.operation(call)
        return SpanRecord(
            name=f"{op} {model}", kind=KIND_CLIENT, trace_id=root.trace_id, span_id=getrandbits(64) or 1,
            parent_id=root.span_id, start_ns=time.time_ns(), trace_state=root.trace_state, attributes={
                "gen_ai.operation.name": op, "gen_ai.request.model": model, "llm_service.provider": provider,
                "gen_ai.provider.name": facts.provider_name(self.provider_types.get(provider, provider)),
                "llm_service.attempt": call.attempts})

    @staticmethod
    def trace_headers(span: SpanRecord) -> dict[str, str]:
        """W3C traceparent (and tracestate) naming `span`, for the upstream request."""
        headers = {"traceparent": f"00-{span.trace_id}-{span.span_id:016x}-01"}
        if span.trace_state:
            headers["tracestate"] = span.trace_state
        return headers

    def end_attempt(self, span: SpanRecord, call: ChatCall, exc: BaseException | None) -> None:
        if exc is not None:
            _fail(span, exc)
            span.end_ns = time.time_ns()
            self._finish(span)
            return
        if call.stream:
            call.on_finish(lambda c: self._end_streamed_attempt(span, c))   # after the last byte
            return
        self._attempt_result(span, call)

    def _end_streamed_attempt(self, span: SpanRecord, call: ChatCall) -> None:
        if call.error:
            span.status, span.message = STATUS_ERROR, call.error
            assert span.attributes is not None
            span.attributes["error.type"] = facts.error_code(call) or "stream_error"
        self._attempt_result(span, call)

    def _attempt_result(self, span: SpanRecord, call: ChatCall) -> None:
        u = call.usage
        if u is not None and span.attributes is not None:
            span.attributes["gen_ai.usage.input_tokens"] = u.prompt_tokens
            span.attributes["gen_ai.usage.output_tokens"] = u.completion_tokens
        span.end_ns = time.time_ns()
        self._finish(span)

    # -- lifecycle --------------------------------------------------------------------------------------

    async def flush(self, within: float = 10.0) -> bool:
        """Export what is recorded so far and wait for the collector's answer (tests, shutdown)."""
        self._hand_off()
        return await self.exporter.flush(within)

    async def shutdown(self) -> None:
        """Hand off the last batch; the exporter process exports it and exits."""
        self._hand_off()
        await self.exporter.close()


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
