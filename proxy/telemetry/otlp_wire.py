"""OTLP/protobuf bytes of our spans, written directly in opentelemetry-proto's wire format.

Filling the generated protobuf classes cost ~22 µs a request (8 spans) in the exporter process, its
largest share of CPU. Our spans have a fixed shape (no events, links or dropped counts), so their
`ExportTraceServiceRequest` is a few byte strings joined; the repeated parts (stage names, attribute
pairs such as `gen_ai.operation.name=chat`) are encoded once and reused. A test holds the bytes equal to
the official encoder's deterministic serialization.
"""

from __future__ import annotations

import struct
from typing import Any

from proxy.telemetry.trace_record import (
    KIND_INTERNAL,
    RequestTrace,
    SpanRecord,
    attempt_key,
    attempt_span,
    attempt_static,
    request_dynamic,
    request_key,
    request_static,
    stage_common,
    stage_intervals,
    stage_span,
)

_Q, _D, _I = struct.Struct("<Q").pack, struct.Struct("<d").pack, struct.Struct("<I").pack
_BE = struct.Struct(">Q").pack                       # span ids: 8 bytes, big-endian
_TIMES = struct.Struct("<BQBQ").pack                 # start_time (field 7) and end_time (8), fixed64
_KINDS = (b"", b"\x30\x01", b"\x30\x02", b"\x30\x03")   # Span.kind (field 6): INTERNAL, SERVER, CLIENT
_FLAGS_LOCAL = b"\x85\x01" + _I(0x100)              # Span.flags (field 16): HAS_IS_REMOTE
_FLAGS_REMOTE = b"\x85\x01" + _I(0x300)             # ... | IS_REMOTE
_STAGE_TAIL = b"\x7a\x00" + _FLAGS_LOCAL             # a stage span: status unset, parent local
_SMALL = [bytes((i,)) for i in range(128)]
_MASK64 = (1 << 64) - 1
_MEMO_LIMIT = 8192
# Attributes that vary per request: never memoised (they would only churn the memo).
_UNIQUE = frozenset({"llm_service.request_id", "gen_ai.input.messages", "gen_ai.output.messages",
                     "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                     "gen_ai.usage.cache_read.input_tokens"})


def varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + varint(len(payload)) + payload


def any_value(v: Any) -> bytes:
    """AnyValue: oneof string(1), bool(2), int(3), double(4), array(5), kvlist(6), bytes(7)."""
    t = v.__class__
    if t is str:
        return _ld(b"\x0a", v.encode())
    if t is bool:
        return b"\x10\x01" if v else b"\x10\x00"
    if t is int:
        return b"\x18" + varint(v & _MASK64)
    if t is float:
        return b"\x21" + _D(v)
    if t is bytes:
        return _ld(b"\x3a", v)
    if isinstance(v, list | tuple):
        return _ld(b"\x2a", b"".join(_ld(b"\x0a", any_value(x)) for x in v))
    if isinstance(v, dict):
        return _ld(b"\x32", b"".join(_ld(b"\x0a", key_value(k, x)) for k, x in v.items()))
    return _ld(b"\x0a", str(v).encode())


def key_value(k: str, v: Any) -> bytes:
    body = _ld(b"\x0a", k.encode())
    return body if v is None else body + _ld(b"\x12", any_value(v))


class WireEncoder:
    """Encodes batches of SpanRecords for one resource and scope; keeps its memo of repeated parts."""

    def __init__(self, resource: bytes, scope_name: str, scope_version: str) -> None:
        self.resource = _ld(b"\x0a", resource)                      # ResourceSpans.resource
        self.scope = _ld(b"\x0a", _ld(b"\x0a", scope_name.encode()) + _ld(b"\x12", scope_version.encode()))
        self._attrs: dict[tuple[str, type, Any], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._heads: dict[tuple[str, ...], list[bytes]] = {}
        self._statics: dict[tuple[Any, ...], bytes] = {}
        self._leads: dict[tuple[str, ...], dict[int, list[bytes]]] = {}

    def _attribute(self, k: str, v: Any) -> bytes:
        """Span.attributes (field 9) entry; memoised for values that repeat across requests."""
        t = v.__class__
        if t is float or (t is str and len(v) > 128) or t not in (str, int, bool) or k in _UNIQUE:
            return _ld(b"\x4a", key_value(k, v))
        key = (k, t, v)
        out = self._attrs.get(key)
        if out is None:
            if len(self._attrs) >= _MEMO_LIMIT:
                self._attrs.clear()
            out = self._attrs[key] = _ld(b"\x4a", key_value(k, v))
        return out

    def _name(self, name: str) -> bytes:
        out = self._names.get(name)
        if out is None:
            if len(self._names) >= _MEMO_LIMIT:
                self._names.clear()
            out = self._names[name] = _ld(b"\x2a", name.encode()) if name else b""
        return out

    def span(self, r: SpanRecord, trace_id: bytes, encoded: bytes = b"") -> bytes:
        """One Span message. `encoded`: attribute fields already encoded, placed before r.attributes'."""
        head = b"\x0a\x10" + trace_id + b"\x12\x08" + _BE(r.span_id)
        if r.trace_state:
            head += _ld(b"\x1a", r.trace_state.encode())
        if r.parent_id:
            head += b"\x22\x08" + _BE(r.parent_id)
        name = self._names.get(r.name)
        if name is None:
            name = self._name(r.name)
        kind = _KINDS[r.kind] if 0 < r.kind < len(_KINDS) else (b"\x30" + varint(r.kind) if r.kind else b"")
        times = _TIMES(0x39, r.start_ns, 0x41, r.end_ns) if r.start_ns and r.end_ns else (
            (b"\x39" + _Q(r.start_ns) if r.start_ns else b"") + (b"\x41" + _Q(r.end_ns) if r.end_ns else b""))
        flags = _FLAGS_REMOTE if r.remote_parent else _FLAGS_LOCAL
        if not r.attributes and not r.status and not encoded:     # a plain span: no lists
            return b"".join((head, name, kind, times, b"\x7a\x00", flags))
        parts = [head, name, kind, times, encoded]
        if r.attributes:
            memo, attr = self._attrs, self._attribute
            for k, v in r.attributes.items():
                t = v.__class__
                enc = memo.get((k, t, v)) if t is str or t is int or t is bool else None
                parts.append(enc if enc is not None else attr(k, v))
        if r.status:
            status = (_ld(b"\x12", r.message.encode()) if r.message else b"") + b"\x18" + varint(r.status)
            parts.append(_ld(b"\x7a", status))
        else:
            parts.append(b"\x7a\x00")                              # present, empty: status unset
        parts.append(flags)                                         # flags: HAS_IS_REMOTE (| IS_REMOTE)
        return b"".join(parts)

    def request(self, records: list[SpanRecord]) -> bytes:
        """ExportTraceServiceRequest{resource_spans: [{resource, scope_spans: [{scope, spans}]}]}."""
        spans: list[bytes] = []
        last_hex, last_id = "", b""
        span = self.span
        for r in records:
            if r.trace_id != last_hex:
                last_hex, last_id = r.trace_id, bytes.fromhex(r.trace_id)
            body = span(r, last_id)
            spans.append(b"\x12" + varint(len(body)) + body)
        scope_spans = _ld(b"\x12", self.scope + b"".join(spans))
        return _ld(b"\x0a", self.resource + scope_spans)

    def traces(self, traces: list[RequestTrace], stage_names: list[str], provider_types: dict[str, str],
               new_id: Any) -> bytes:
        """The request of `to_spans` of each trace: the same bytes (a test holds them equal)."""
        return self.wrap([self.trace_spans(t, stage_names, provider_types, new_id) for t in traces])

    def wrap(self, spans: list[bytes]) -> bytes:
        """ExportTraceServiceRequest{resource_spans: [{resource, scope_spans: [{scope, spans}]}]} around
        Span fields from trace_spans."""
        scope_spans = _ld(b"\x12", self.scope + b"".join(spans))
        return _ld(b"\x0a", self.resource + scope_spans)

    def trace_spans(self, t: RequestTrace, stage_names: list[str], provider_types: dict[str, str],
                    new_id: Any) -> bytes:
        """One trace's Span fields, without a SpanRecord or an attribute dict for the spans every request
        has: a stage span is a template and two timestamps, the request span its encoded repeating
        attributes and a few of its own."""
        spans: list[bytes] = []
        add, span = spans.append, self.span
        stage_heads = self._stage_heads(stage_names)
        tid = bytes.fromhex(t.trace_id)
        add(self._request(t, tid, provider_types))
        pre = b"\x0a\x10" + tid + b"\x12\x08"
        mid = ((_ld(b"\x1a", t.trace_state.encode()) if t.trace_state else b"") + b"\x22\x08" + _BE(t.span_id))
        common: dict[str, Any] | None = None
        err = t.stage_error[0] if t.stage_error is not None else -1
        leads = self._leads.setdefault(tuple(stage_names), {})
        lead = leads.get(len(mid))
        if lead is None:                    # a stage span's length is fixed by its name and this: so is its head
            lead = leads[len(mid)] = [b"\x12" + varint(len(pre) + 8 + len(mid) + len(h) + 18 + len(_STAGE_TAIL))
                                      for h in stage_heads]
        for k, start, end in stage_intervals(t):
            if k == err or not (start and end) or not 0 <= k < len(stage_heads):
                common = common or stage_common(t)
                body = span(stage_span(t, k, start, end, stage_names, common, new_id), tid)
                add(b"\x12" + varint(len(body)) + body)
                continue
            add(b"".join((lead[k], pre, _BE(new_id()), mid, stage_heads[k], _TIMES(0x39, start, 0x41, end),
                          _STAGE_TAIL)))
        for a in t.attempts:
            body = span(attempt_span(t, a, provider_types, static=False), tid,
                        self._static(attempt_key(t, a), attempt_static, t, a, provider_types))
            add(b"\x12" + varint(len(body)) + body)
        return b"".join(spans)

    def _request(self, t: RequestTrace, tid: bytes, provider_types: dict[str, str]) -> bytes:
        """The request span's field, as span(request_span(t)) writes it, from `t` directly."""
        parts = [b"\x0a\x10", tid, b"\x12\x08", _BE(t.span_id)]
        if t.trace_state:
            parts.append(_ld(b"\x1a", t.trace_state.encode()))
        if t.parent_id:
            parts += (b"\x22\x08", _BE(t.parent_id))
        parts += (self._name(f"{t.op} {t.model}"), _KINDS[2])
        if t.start_ns and t.end_ns:
            parts.append(_TIMES(0x39, t.start_ns, 0x41, t.end_ns))
        else:
            parts += ((b"\x39" + _Q(t.start_ns) if t.start_ns else b""), (b"\x41" + _Q(t.end_ns) if t.end_ns else b""))
        parts.append(self._static(request_key(t), request_static, t, provider_types))
        attribute = self._attribute
        parts += [attribute(k, v) for k, v in request_dynamic(t).items()]
        if t.message:
            parts.append(_ld(b"\x7a", _ld(b"\x12", t.message.encode()) + b"\x18\x02"))
        else:
            parts.append(b"\x7a\x00")
        parts.append(_FLAGS_REMOTE if t.remote_parent else _FLAGS_LOCAL)
        body = b"".join(parts)
        return b"\x12" + varint(len(body)) + body

    def _static(self, key: tuple[Any, ...], attrs: Any, *args: Any) -> bytes:
        """The encoded attribute fields that `attrs(*args)` gives for `key`, encoded once per key."""
        out = self._statics.get(key)
        if out is None:
            if len(self._statics) >= _MEMO_LIMIT:
                self._statics.clear()
            attribute = self._attribute
            out = self._statics[key] = b"".join(attribute(k, v) for k, v in attrs(*args).items())
        return out

    def _stage_heads(self, names: list[str]) -> list[bytes]:
        """Per stage: its name and kind fields (a stage span's only fixed part after the ids)."""
        key = tuple(names)
        heads = self._heads.get(key)
        if heads is None:
            heads = self._heads[key] = [self._name(n) + _KINDS[KIND_INTERNAL] for n in names]
        return heads
