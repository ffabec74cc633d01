"""OTLP traces: one SERVER span per request, a child span per pipeline stage and per upstream attempt.

The proxy records each sampled request as one compact `RequestTrace` (trace_record.py) carried on the
call (`call.trace`), never through the ambient context, so a stream relayed after the handler returned
still ends at the right time. A stage costs a timestamp appended to a list (no wrapper frame), an attempt
one small struct; the spans, their attributes and the OTLP encoding are made in the exporter process
(otlp_child.py), which gets the finished records in msgpack batches. Sampling is decided once per trace
(parent-based, then a trace-id ratio like TraceIdRatioBased); an unsampled request records nothing. A
slow or dead collector drops spans, never requests.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from random import getrandbits
from typing import Any

import msgspec
import orjson

from proxy.config import Target
from proxy.context import ChatCall, Reply
from proxy.errors import ProxyError
from proxy.pipeline import Check, Handler, Stage
from proxy.providers.base import WireRequest
from proxy.telemetry import facts
from proxy.telemetry.otlp_export import ExportSettings, make_exporter
from proxy.telemetry.otlp_process import ExportProcess
from proxy.telemetry.trace_record import QUIET, ROUTER, AttemptTrace, RequestTrace, stage_plan
from proxy.telemetry.trace_settings import TracingSettings, parse_traceparent, resolve

CONTENT_LIMIT = 64 * 1024        # bytes of prompt / completion kept on a span when record_content is on
BATCH = 1024                     # requests per hand-off to the exporter process (~8000 spans)
DELAY = 0.5                      # seconds a finished request may wait for its batch
_ENCODE = msgspec.msgpack.Encoder().encode
_REQUEST_ATTRS = (("max_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
                  ("top_p", "gen_ai.request.top_p"))
_REQUEST_KEYS = frozenset(k for k, _ in _REQUEST_ATTRS)
_LOW64 = (1 << 64) - 1
_OPERATIONS = facts.OPERATIONS.get

__all__ = ["Tracing", "TracingSettings", "make_exporter", "parse_traceparent", "resolve"]


def stage_name(stage: object) -> str:
    name = getattr(stage, "name", None)
    if isinstance(name, str) and name:
        return name
    cls = type(stage).__name__.removesuffix("Stage") or type(stage).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls).lower()


def error_of(exc: BaseException) -> tuple[str, str]:
    """(error.type, status message) of an exception, as a span records it."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled", "cancelled"
    if isinstance(exc, ProxyError):
        return exc.code or exc.type, exc.message
    return type(exc).__name__, getattr(exc, "message", None) or type(exc).__name__


class Tracing:
    def __init__(self, settings: TracingSettings, provider_types: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        # TraceIdRatioBased: sampled when the trace id's low 64 bits are below ratio * 2**64.
        self._bound = round(settings.sample_ratio * (1 << 64))
        self.stage_names: list[str] = []              # by binding order: what marks' stage numbers mean
        self.exporter = ExportProcess(ExportSettings(
            endpoint=settings.endpoint, protocol=settings.protocol, service_name=settings.service_name,
            headers=settings.headers, export_timeout=settings.export_timeout,
            max_queue_size=settings.max_queue_size, provider_types=dict(provider_types or {}),
            stage_names=self.stage_names))
        self.record_content = settings.record_content
        self._buffer: list[bytes] = []        # finished traces, msgpack-encoded at once (no live objects)
        self._spans = 0                        # spans in the buffer
        self._stage_spans: dict[tuple[int, ...], int] = {}     # stage spans by the marks' codes
        self._timer: asyncio.TimerHandle | None = None
        self._wall = _wall_offset()              # unix ns minus monotonic ns: a request's start in unix ns

    @property
    def dropped(self) -> int:
        return self.exporter.dropped

    # -- hand-off --------------------------------------------------------------------------------------

    def _finish(self, t: RequestTrace) -> None:
        buf = self._buffer
        buf.append(_ENCODE(t))
        codes = tuple(t.marks[::2])       # the same few sequences recur: their stage span counts are memoised
        stages = self._stage_spans.get(codes)
        if stages is None:
            if len(self._stage_spans) >= 256:
                self._stage_spans.clear()
            stages = self._stage_spans[codes] = len(stage_plan(codes))
        self._spans += 1 + len(t.attempts) + stages
        if len(buf) >= BATCH:
            self._hand_off()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(DELAY, self._hand_off)

    def _hand_off(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, spans, self._buffer, self._spans = self._buffer, self._spans, [], 0
        if batch:
            self.exporter.send(batch, spans)

    async def start(self) -> None:
        """Start the exporter process (app startup), so the first requests do not pay for it."""
        await self.exporter.start()

    # -- the request span ------------------------------------------------------------------------------

    def start_request(self, call: ChatCall) -> None:
        """Sampling is decided here, once per trace: a client's traceparent decides (ParentBased), else the
        new trace id's low 64 bits against the ratio (TraceIdRatioBased). Unsampled: nothing recorded."""
        header = call.headers.get("traceparent")
        parsed = parse_traceparent(header) if header else None
        if parsed is None:
            bits = getrandbits(128) or 1
            if (bits & _LOW64) >= self._bound:
                return
            trace_id, parent_id, remote, state = bits.to_bytes(16, "big").hex(), 0, False, ""
        elif not parsed[2]:
            return
        else:
            trace_id, parent_id, remote, state = parsed[0], parsed[1], True, call.headers.get("tracestate", "").strip()
        if not self._buffer:                     # the first since a hand-off (or since idle): a fresh offset
            self._wall = _wall_offset()
        body = call.body
        req: dict[str, Any] = {}
        if not _REQUEST_KEYS.isdisjoint(body):
            for key, attr in _REQUEST_ATTRS:
                v = body.get(key)
                if v is not None and v.__class__ in (int, float):
                    req[attr] = v
        if call.stream:
            req["gen_ai.request.stream"] = True
            if call.relayed is None:
                call.relayed = []       # the relay's tap: read once at the end, no wrapper on every chunk
        op = _OPERATIONS(call.endpoint, call.endpoint)
        t = RequestTrace(trace_id, getrandbits(64) or 1, parent_id, remote, state,   # positional: cheaper
                         self._wall + int(call.started * 1e9), op, call.model, call.request_id, call.ingress,
                         req, [], None, [])
        if self.record_content:
            t.input_messages = orjson.dumps(body.get("messages")).decode()[:CONTENT_LIMIT]
        call.trace = t

    def returned(self, call: ChatCall, reply: Reply) -> None:
        """The pipeline answered: end the stage that answered itself (if no later stage or the router was
        entered), and, unless the adapter read them off its parse, collect the finish reasons and the
        response model from what goes out, by a byte scan."""
        t: RequestTrace | None = call.trace
        if t is None:
            return
        marks = t.marks
        if marks and marks[-2] >= 0 and not marks[-2] & 1:
            marks += (marks[-2] + 1, time.time_ns())
        if reply.chunks is not None:
            if not call.attempts:        # not relayed from a provider (a cache replay): no tap, watch the chunks
                reply.chunks = self._watch_stream(call, reply.chunks)
        elif reply.body:
            if call.finish_reasons is None:      # the adapter did not read them off its parse
                reasons: list[str] = []
                facts.scan_finish_reasons(reply.body, reasons)
                call.finish_reasons = reasons
                call.response_model = call.response_model or facts.scan_model(reply.body)
            if self.record_content:
                call.extras["otel.output"] = _output_messages(reply.body)

    async def _watch_stream(self, call: ChatCall, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        reasons: list[str] = []
        call.finish_reasons = reasons
        kept: list[bytes] | None = [] if self.record_content else None
        model: str | None = None
        try:
            async for data in chunks:
                if model is None:
                    model = call.response_model = facts.scan_model(data)
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

    def end_request(self, call: ChatCall, o: facts.Outcome | None = None) -> None:
        t: RequestTrace | None = call.trace
        if t is None:
            return
        call.trace = None
        if o is None:
            o = facts.outcome(call)
        extras = call.extras
        tap = call.relayed
        if tap and call.finish_reasons is None:      # a relayed stream: read what went out, once
            n = call.body.get("n")
            reasons, model = facts.stream_facts(tap, n if n.__class__ is int else 1)
            call.finish_reasons = reasons
            call.response_model = call.response_model or model
            if self.record_content:
                extras["otel.output"] = _stream_output(b"".join(tap)[:4 * CONTENT_LIMIT])
        t.end_ns = time.time_ns()
        status = t.status = o.status
        if status >= 400 or call.error:
            t.error = o.error_code or str(status)
            if status >= 500 or call.error:
                t.message = call.error or str(status)
        t.n_attempts = call.attempts
        t.provider = o.provider
        t.response_model = call.response_model or o.upstream_model
        u = call.usage
        if u is not None:
            t.usage = (u.prompt_tokens, u.completion_tokens, u.cached_tokens)
        t.finish_reasons = call.finish_reasons or []
        t.ttft, t.cost, t.cache, t.key_id = o.ttft, o.cost, o.cache, o.key_id
        if self.record_content:
            t.output_messages = extras.pop("otel.output", None)
        self._finish(t)

    # -- stage and attempt spans -----------------------------------------------------------------------

    def _stage(self, stage: object) -> int:
        """The stage's number in the marks (binding order) and its span name."""
        self.stage_names.append("pipeline." + stage_name(stage))
        return len(self.stage_names) - 1

    def bind_stage(self, stage: Stage, nxt: Handler) -> Handler:
        """compose()'s binder when tracing is on: a mark when the stage is entered, then the stage itself
        (no wrapper frame). Its span ends when the next stage or the router is entered, or, if it
        answered or raised itself, when the pipeline returned (that includes the stages above unwinding)."""
        enter = 2 * self._stage(stage)

        def entered(call: ChatCall) -> Awaitable[Reply]:
            t: RequestTrace | None = call.trace
            if t is not None:
                t.marks += (enter, time.time_ns())
            return stage(call, next=nxt)

        return entered

    def bind_checks(self, checks: Sequence[Check], nxt: Handler) -> Handler:
        """compose()'s binder for consecutive checks: each gets its span, the one that raised its error.
        A check with `traced = False` (validation, the cost stage's set-up: µs of bookkeeping an operator
        never looks into) gets none: its mark only ends the span before it."""
        numbered = tuple((2 * self._stage(c) if getattr(c, "traced", True) else QUIET, c.check) for c in checks)

        async def checked(call: ChatCall) -> Reply:
            t: RequestTrace | None = call.trace
            if t is None:
                for _, fn in numbered:
                    pending = fn(call)
                    if pending is not None:
                        await pending
                return call.replied(await nxt(call))
            marks = t.marks
            for enter, fn in numbered:
                marks += (enter, time.time_ns())
                try:
                    pending = fn(call)
                    if pending is not None:
                        await pending
                except BaseException as e:
                    if enter != QUIET:
                        marks += (enter + 1, time.time_ns())
                        code, message = error_of(e)
                        t.stage_error = (enter // 2, code, message)
                    raise
            return call.replied(await nxt(call))

        return checked

    def mark_router(self, router: Handler) -> Handler:
        def enter_router(call: ChatCall) -> Awaitable[Reply]:
            t: RequestTrace | None = call.trace
            if t is not None:
                t.marks += (ROUTER, time.time_ns())
            return router(call)
        return enter_router

    def raised(self, call: ChatCall, exc: BaseException) -> None:
        """The pipeline raised: end the stage that raised (if no later stage or the router was entered)."""
        t: RequestTrace | None = call.trace
        if t is None or not t.marks:
            return
        last = t.marks[-2]
        if last >= 0 and last % 2 == 0:                 # a stage entered and nothing after it
            t.marks += (last + 1, time.time_ns())
            if t.stage_error is None:
                code, message = error_of(exc)
                t.stage_error = (last // 2, code, message)

    def start_attempt(self, call: ChatCall, target: Target, wire: WireRequest) -> AttemptTrace | None:
        """The attempt's span, when the request is sampled; `wire` then carries W3C traceparent (and
        tracestate) naming it, in a new headers dict (the provider's own is shared by all its requests)."""
        t: RequestTrace | None = call.trace
        if t is None:
            return None
        a = AttemptTrace(getrandbits(64) or 1, time.time_ns(), target.provider, target.model, call.attempts)
        t.attempts.append(a)
        headers = dict(wire.headers)
        headers["traceparent"] = f"00-{t.trace_id}-{a.span_id:016x}-01"
        if t.trace_state:
            headers["tracestate"] = t.trace_state
        wire.headers = headers
        return a

    def end_attempt(self, a: AttemptTrace, call: ChatCall, exc: BaseException | None) -> None:
        if exc is not None:
            a.end_ns = time.time_ns()
            a.error, a.message = error_of(exc)
        elif call.stream:
            call.on_finish(lambda c: _end_streamed_attempt(a, c))     # after the last byte
        else:
            _attempt_result(a, call)

    # -- lifecycle --------------------------------------------------------------------------------------

    async def flush(self, within: float = 10.0) -> bool:
        """Export what is recorded so far and wait for the collector's answer (tests, shutdown)."""
        self._hand_off()
        return await self.exporter.flush(within)

    async def shutdown(self) -> None:
        """Hand off the last batch; the exporter process exports it and exits."""
        self._hand_off()
        await self.exporter.close()


def _wall_offset() -> int:
    return time.time_ns() - time.monotonic_ns()


def _end_streamed_attempt(a: AttemptTrace, call: ChatCall) -> None:
    if call.error:
        a.error, a.message = facts.error_code(call) or "stream_error", call.error
    _attempt_result(a, call)


def _attempt_result(a: AttemptTrace, call: ChatCall) -> None:
    u = call.usage
    if u is not None:
        a.input_tokens, a.output_tokens = u.prompt_tokens, u.completion_tokens
    a.end_ns = time.time_ns()


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
