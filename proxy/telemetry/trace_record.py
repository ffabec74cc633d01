"""What the proxy records of a traced request, and how the exporter process turns it into spans.

The proxy keeps one compact `RequestTrace` per sampled request: ids, timestamps, a flat list of stage
marks, one `AttemptTrace` per upstream attempt, and the plain facts the attributes are made of. Spans,
their attribute dicts and the OTLP encoding are built by `to_spans` in the exporter process, so the
request path pays a few appends and one struct, not ~8 span objects and ~30 attribute entries.

Stage marks are pairs `(code, unix ns)`: code `2k` = stage k entered (which ends the stage before it:
it handed on), `2k + 1` = stage k ended without handing on (it answered, or raised), `ROUTER` = the
router was entered, `QUIET` = a stage without a span was. Stage numbers are in binding order.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.telemetry.facts import provider_name

KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3      # OTLP SpanKind values
STATUS_ERROR = 2                                        # OTLP Status.code
ROUTER = -1                     # mark: the router was entered
QUIET = -3                      # mark: an untraced stage was entered (it ends the span before it)


class SpanRecord(msgspec.Struct, array_like=True, kw_only=True):
    """One span, ready for the OTLP encoder."""

    name: str
    kind: int
    trace_id: str               # 32 lower-case hex digits, as in traceparent
    span_id: int
    parent_id: int = 0          # 0: a root span
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, Any] | None = None
    status: int = 0             # 0 unset, 2 error
    message: str = ""
    remote_parent: bool = False  # the parent came from the client's traceparent
    trace_state: str = ""


class AttemptTrace(msgspec.Struct, array_like=True, gc=False):
    span_id: int                # sent upstream in traceparent
    start_ns: int
    provider: str
    model: str
    number: int                 # the call's attempt count when it began (1, 2, ...)
    end_ns: int = 0
    error: str = ""             # error.type when it failed
    message: str = ""
    input_tokens: int = -1      # -1: unknown
    output_tokens: int = -1


class RequestTrace(msgspec.Struct, array_like=True):
    trace_id: str
    span_id: int
    parent_id: int
    remote_parent: bool
    trace_state: str
    start_ns: int
    op: str
    model: str
    request_id: str
    ingress: str
    request_attrs: dict[str, Any]                # gen_ai.request.* read off the body at the start
    marks: list[int] = []
    stage_error: tuple[int, str, str] | None = None    # (stage, error.type, message) of the stage that raised
    attempts: list[AttemptTrace] = []
    end_ns: int = 0
    status: int = 0
    error: str = ""                              # error.type of the request, if any
    message: str = ""                            # the span's status message when it failed
    n_attempts: int = 0
    provider: str = ""
    response_model: str = ""
    usage: tuple[int, int, int] | None = None    # input, output, cached-read tokens
    finish_reasons: list[str] = []
    ttft: float | None = None
    cost: float | None = None
    cache: str | None = None
    key_id: str | None = None
    input_messages: str | None = None            # record_content only
    output_messages: str | None = None


def stage_plan(codes: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    """Where the stage spans are in marks with these codes (the marks' even entries): (stage, index of its
    start time, index of its end time, or 0 when it ends with the request). A stage ends when the next
    stage or the router is entered, or when it ended without handing on; one still open ends with the
    request. The same codes recur request after request, so the exporter memoises this."""
    plan: list[tuple[int, int, int]] = []
    open_stage, opened = -1, 0
    for n, code in enumerate(codes):
        if open_stage >= 0:
            plan.append((open_stage, opened, 2 * n + 1))
            open_stage = -1
        if code >= 0 and not code & 1:
            open_stage, opened = code >> 1, 2 * n + 1
    if open_stage >= 0:
        plan.append((open_stage, opened, 0))
    return tuple(plan)


def stage_intervals(t: RequestTrace) -> list[tuple[int, int, int]]:
    """(stage, start, end) of every stage span, from the marks."""
    marks = t.marks
    return [(k, marks[i], marks[j] if j else t.end_ns) for k, i, j in stage_plan(tuple(marks[::2]))]


def to_spans(t: RequestTrace, stage_names: list[str], provider_types: dict[str, str],
             new_id: Any) -> list[SpanRecord]:
    """The request span, one span per stage it passed, one per attempt. `new_id()`: a random span id."""
    common = stage_common(t)
    return [request_span(t, provider_types),
            *(stage_span(t, k, start, end, stage_names, common, new_id) for k, start, end in stage_intervals(t)),
            *(attempt_span(t, a, provider_types) for a in t.attempts)]


def stage_common(t: RequestTrace) -> dict[str, Any]:
    return {"kind": KIND_INTERNAL, "trace_id": t.trace_id, "parent_id": t.span_id, "trace_state": t.trace_state}


def stage_span(t: RequestTrace, k: int, start: int, end: int, names: list[str], common: dict[str, Any],
                new_id: Any) -> SpanRecord:
    span = SpanRecord(name=names[k] if 0 <= k < len(names) else f"pipeline.{k}", span_id=new_id(),
                      start_ns=start, end_ns=end, **common)
    if t.stage_error is not None and t.stage_error[0] == k:
        span.status, span.message = STATUS_ERROR, t.stage_error[2]
        span.attributes = {"error.type": t.stage_error[1]}
    return span


def request_key(t: RequestTrace) -> tuple[Any, ...]:
    """What the request span's repeating attributes are made of (the exporter encodes them once)."""
    return (t.op, t.model, t.ingress, tuple(t.request_attrs.items()), t.n_attempts, t.provider, t.response_model,
            tuple(t.finish_reasons), t.cache, t.key_id, t.status, t.error)


def request_static(t: RequestTrace, provider_types: dict[str, str]) -> dict[str, Any]:
    """The attributes that repeat across requests (same model, provider, status, ...)."""
    attrs: dict[str, Any] = {"gen_ai.operation.name": t.op, "gen_ai.request.model": t.model,
                             "llm_service.ingress": t.ingress, **t.request_attrs,
                             "llm_service.attempts": t.n_attempts}
    if t.provider:
        attrs["gen_ai.provider.name"] = provider_name(provider_types.get(t.provider, t.provider))
        attrs["llm_service.provider"] = t.provider
    if t.response_model:
        attrs["gen_ai.response.model"] = t.response_model
    if t.finish_reasons:
        attrs["gen_ai.response.finish_reasons"] = list(t.finish_reasons)
    if t.cache is not None:
        attrs["llm_service.cache"] = t.cache
    if t.key_id is not None:
        attrs["llm_service.key_id"] = t.key_id
    attrs["http.response.status_code"] = t.status
    if t.error:
        attrs["error.type"] = t.error
    return attrs


def request_dynamic(t: RequestTrace) -> dict[str, Any]:
    """The attributes of this request alone: its id, tokens, timing, cost, content."""
    attrs: dict[str, Any] = {"llm_service.request_id": t.request_id}
    if t.usage is not None:
        attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"] = t.usage[0], t.usage[1]
        if t.usage[2]:
            attrs["gen_ai.usage.cache_read.input_tokens"] = t.usage[2]
    if t.ttft is not None:
        attrs["gen_ai.response.time_to_first_chunk"] = t.ttft
    if t.cost is not None:
        attrs["llm_service.cost_usd"] = t.cost
    if t.input_messages is not None:
        attrs["gen_ai.input.messages"] = t.input_messages
    if t.output_messages:
        attrs["gen_ai.output.messages"] = t.output_messages
    return attrs


def request_span(t: RequestTrace, provider_types: dict[str, str], static: bool = True) -> SpanRecord:
    """`static=False`: without the repeating attributes (the exporter adds them already encoded)."""
    attrs = {**request_static(t, provider_types), **request_dynamic(t)} if static else request_dynamic(t)
    span = SpanRecord(name=f"{t.op} {t.model}", kind=KIND_SERVER, trace_id=t.trace_id, span_id=t.span_id,
                      parent_id=t.parent_id, start_ns=t.start_ns, end_ns=t.end_ns, attributes=attrs,
                      remote_parent=t.remote_parent, trace_state=t.trace_state)
    if t.message:
        span.status, span.message = STATUS_ERROR, t.message
    return span


def attempt_key(t: RequestTrace, a: AttemptTrace) -> tuple[Any, ...]:
    return (t.op, a.model, a.provider, a.number, a.error)


def attempt_static(t: RequestTrace, a: AttemptTrace, provider_types: dict[str, str]) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": t.op, "gen_ai.request.model": a.model, "llm_service.provider": a.provider,
        "gen_ai.provider.name": provider_name(provider_types.get(a.provider, a.provider)),
        "llm_service.attempt": a.number}
    if a.error:
        attrs["error.type"] = a.error
    return attrs


def attempt_span(t: RequestTrace, a: AttemptTrace, provider_types: dict[str, str], static: bool = True) -> SpanRecord:
    attrs = attempt_static(t, a, provider_types) if static else {}
    if a.input_tokens >= 0:
        attrs["gen_ai.usage.input_tokens"] = a.input_tokens
        attrs["gen_ai.usage.output_tokens"] = a.output_tokens
    span = SpanRecord(name=f"{t.op} {a.model}", kind=KIND_CLIENT, trace_id=t.trace_id, span_id=a.span_id,
                      parent_id=t.span_id, start_ns=a.start_ns, end_ns=a.end_ns or t.end_ns,
                      attributes=attrs or None, trace_state=t.trace_state)
    if a.error:
        span.status, span.message = STATUS_ERROR, a.message or a.error
    return span
