"""OTLP/protobuf bytes of our spans, written directly in opentelemetry-proto's wire format.

Filling the generated protobuf classes cost ~22 µs a request (8 spans) in the exporter process, its
largest share of CPU. Our spans have a fixed shape (no events, links or dropped counts), so their
`ExportTraceServiceRequest` is a few byte strings joined; the repeated parts (stage names, attribute
pairs such as `gen_ai.operation.name=chat`) are encoded once and reused. Spans of a trace record put
those first and their ids and times after (protobuf reads fields in any order), so a stage span is four
byte strings. Tests hold the result equal to the official encoder's, message for message, and the
generic path (`request`) equal to its deterministic serialization byte for byte.
"""

from __future__ import annotations

import struct
from typing import Any

from proxy.telemetry.trace_record import (
    KIND_INTERNAL,
    AttemptTrace,
    RequestTrace,
    SpanRecord,
    attempt_key,
    attempt_static,
    request_key,
    request_static,
    stage_common,
    stage_plan,
    stage_span,
)

_Q, _D, _I = struct.Struct("<Q").pack, struct.Struct("<d").pack, struct.Struct("<I").pack
_BE = struct.Struct(">Q").pack                       # span ids: 8 bytes, big-endian
_TIMES = struct.Struct("<BQBQ").pack                 # start_time (field 7) and end_time (8), fixed64
_KINDS = (b"", b"\x30\x01", b"\x30\x02", b"\x30\x03")   # Span.kind (field 6): INTERNAL, SERVER, CLIENT
_FLAGS_LOCAL = b"\x85\x01" + _I(0x100)              # Span.flags (field 16): HAS_IS_REMOTE
_FLAGS_REMOTE = b"\x85\x01" + _I(0x300)             # ... | IS_REMOTE
_STAGE_TAIL = b"\x7a\x00" + _FLAGS_LOCAL             # a stage span: status unset, parent local
_STAGE_IDS = struct.Struct("<QBQBQ").pack           # a stage span's id (random: any byte order), start, end
_STAGE_IDS_SIZE = struct.calcsize("<QBQBQ")
_SMALL = [bytes((i,)) for i in range(128)]
_FIELD2_SIZE = 4096
_FIELD2 = [b"\x12" + bytes((i,)) if i < 128 else bytes((0x12, i & 0x7F | 0x80, i >> 7))   # ScopeSpans.spans
           for i in range(_FIELD2_SIZE)]                                                   # tag and length
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


_INTS = [b"\x18" + bytes((i,)) for i in range(128)]      # AnyValue{int_value: i}


def _int(v: int) -> bytes:
    return _INTS[v] if 0 <= v < 128 else b"\x18" + varint(v & _MASK64)


def _string(v: str) -> bytes:
    b = v.encode()
    return b"\x0a" + varint(len(b)) + b


def _times(start: int, end: int) -> bytes:
    """Span start_time (field 7) and end_time (8); a zero is left out, as protobuf leaves defaults out."""
    if start and end:
        return _TIMES(0x39, start, 0x41, end)
    return (b"\x39" + _Q(start) if start else b"") + (b"\x41" + _Q(end) if end else b"")


_Stages = tuple[list[str], list[bytes], dict[int, list[bytes]]]   # names, fixed fields, heads by length


class WireEncoder:
    """Encodes batches of SpanRecords for one resource and scope; keeps its memo of repeated parts."""

    def __init__(self, resource: bytes, scope_name: str, scope_version: str) -> None:
        self.resource = _ld(b"\x0a", resource)                      # ResourceSpans.resource
        self.scope = _ld(b"\x0a", _ld(b"\x0a", scope_name.encode()) + _ld(b"\x12", scope_version.encode()))
        self._attrs: dict[tuple[str, type, Any], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._heads: dict[tuple[str, ...], _Stages] = {}
        self._statics: dict[tuple[Any, ...], bytes] = {}
        self._kv_heads: dict[tuple[str, int], bytes] = {}
        self._kv_string_heads: dict[tuple[str, int], bytes] = {}
        self._token_heads: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self._plans: dict[tuple[int, ...], tuple[tuple[int, int, int], ...]] = {}

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
        times = _times(r.start_ns, r.end_ns)
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
        """The request of `to_spans` of each trace (a test holds them equal, field by field)."""
        stages = self._stages(stage_names)
        out: list[bytes] = []
        for t in traces:
            self.trace_spans(t, stages, provider_types, new_id, out)
        return self.wrap(out)

    def wrap(self, spans: list[bytes]) -> bytes:
        """ExportTraceServiceRequest{resource_spans: [{resource, scope_spans: [{scope, spans}]}]} around
        Span fields from trace_spans: the lengths summed, the bytes joined once (no copy per level)."""
        n = len(self.scope) + sum(map(len, spans))
        inner = self.resource + b"\x12" + varint(n)
        spans[:0] = (b"\x0a", varint(len(inner) + n), inner, self.scope)
        return b"".join(spans)

    def trace_spans(self, t: RequestTrace, stages: _Stages, provider_types: dict[str, str], new_id: Any,
                    out: list[bytes]) -> None:
        """One trace's Span fields, appended to `out`, without a SpanRecord or an attribute dict for the
        spans every request has. Fields whose values repeat (name, kind, attributes, status) come first,
        encoded once per distinct set; the ids and times after them (protobuf reads fields in any order)."""
        tid = bytes.fromhex(t.trace_id)
        sid = _BE(t.span_id)
        # trace id, trace state, parent: what every child span of this trace starts with
        ctx = b"\x0a\x10" + tid + (_ld(b"\x1a", t.trace_state.encode()) if t.trace_state else b"") + b"\x22\x08" + sid
        out.append(self._request(t, tid, sid, provider_types))
        names, tails, leads = stages
        lead = leads.get(len(ctx))
        if lead is None:                    # a stage span's length is fixed by its name and this: so is its head
            lead = leads[len(ctx)] = [b"\x12" + varint(len(ctx) + len(tail) + _STAGE_IDS_SIZE) for tail in tails]
        marks = t.marks
        codes = tuple(marks[::2])
        plan = self._plans.get(codes)
        if plan is None:
            if len(self._plans) >= _MEMO_LIMIT:
                self._plans.clear()
            plan = self._plans[codes] = stage_plan(codes)
        err = t.stage_error[0] if t.stage_error is not None else -1
        named = len(tails)
        for k, i, j in plan:
            start, end = marks[i], marks[j] if j else t.end_ns
            if k == err or k >= named:          # it failed, or has no name: the generic way
                out.append(self._stage(t, k, start, end, tid, names, new_id))
            else:
                out += (lead[k], ctx, tails[k], _STAGE_IDS(new_id(), 0x39, start, 0x41, end))
        for a in t.attempts:
            out.append(self._attempt(t, a, ctx, provider_types))

    def _stage(self, t: RequestTrace, k: int, start: int, end: int, tid: bytes, stage_names: list[str],
               new_id: Any) -> bytes:
        """A stage span the template does not cover (it failed, or has no name): the generic way, its id's
        bytes in the template's order."""
        def swapped() -> int:
            return int.from_bytes(int(new_id()).to_bytes(8, "little"), "big")

        body = self.span(stage_span(t, k, start, end, stage_names, stage_common(t), swapped), tid)
        return b"\x12" + varint(len(body)) + body

    def _kv(self, k: str, val: bytes) -> bytes:
        """A Span.attributes field of key `k` and AnyValue bytes `val`: its head is memoised per key and
        value length, so a per-request value (an id, a token count) costs two concatenations."""
        n = len(val)
        heads = self._kv_heads
        head = heads.get((k, n))
        if head is None:
            if len(heads) >= _MEMO_LIMIT:
                heads.clear()
            key = _ld(b"\x0a", k.encode())
            head = heads[(k, n)] = b"\x4a" + varint(len(key) + 1 + len(varint(n)) + n) + key + b"\x12" + varint(n)
        return head + val

    def _request(self, t: RequestTrace, tid: bytes, sid: bytes, provider_types: dict[str, str]) -> bytes:
        """The request span's field: request_span(t)'s fields, from `t` directly."""
        key = (request_key(t), t.remote_parent, not t.message)
        static = self._statics.get(key)
        if static is None:
            static = self._static(key, self._request_static, t, provider_types)
        parts = [static, b"\x0a\x10", tid, b"\x12\x08", sid]
        if t.trace_state:
            parts.append(_ld(b"\x1a", t.trace_state.encode()))
        if t.parent_id:
            parts += (b"\x22\x08", _BE(t.parent_id))
        start, end = t.start_ns, t.end_ns
        parts.append(_TIMES(0x39, start, 0x41, end) if start and end else _times(start, end))
        kv = self._kv                                   # request_dynamic(t), in its order
        parts.append(self._kv_string("llm_service.request_id", t.request_id))
        u = t.usage
        if u is not None:
            parts.append(self._tokens(u[0], u[1]))
            if u[2]:
                parts.append(kv("gen_ai.usage.cache_read.input_tokens", _int(u[2])))
        if t.ttft is not None:
            parts.append(kv("gen_ai.response.time_to_first_chunk", any_value(t.ttft)))
        if t.cost is not None:
            parts.append(kv("llm_service.cost_usd", any_value(t.cost)))
        if t.input_messages is not None:
            parts.append(self._kv_string("gen_ai.input.messages", t.input_messages))
        if t.output_messages:
            parts.append(self._kv_string("gen_ai.output.messages", t.output_messages))
        if t.message:                                   # the status: the memo holds an unset one
            parts.append(_ld(b"\x7a", _ld(b"\x12", t.message.encode()) + b"\x18\x02"))
        body = b"".join(parts)
        n = len(body)
        return (_FIELD2[n] if n < _FIELD2_SIZE else b"\x12" + varint(n)) + body

    def _kv_string(self, k: str, v: str) -> bytes:
        """`_kv(k, _string(v))` in one step: the head memo holds the value's tag and length too."""
        b = v.encode()
        n = len(b)
        heads = self._kv_string_heads
        head = heads.get((k, n))
        if head is None:
            if len(heads) >= _MEMO_LIMIT:
                heads.clear()
            field = self._kv(k, b"\x0a" + varint(n) + b)
            head = heads[(k, n)] = field[:len(field) - n]
        return head + b

    def _tokens(self, i: int, o: int) -> bytes:
        """The gen_ai.usage.input_tokens and output_tokens attributes: their heads memoised per value length."""
        vi = _INTS[i] if 0 <= i < 128 else b"\x18" + varint(i & _MASK64)
        vo = _INTS[o] if 0 <= o < 128 else b"\x18" + varint(o & _MASK64)
        heads = self._token_heads.get((len(vi), len(vo)))
        if heads is None:
            heads = self._token_heads[(len(vi), len(vo))] = (
                self._kv("gen_ai.usage.input_tokens", vi)[:-len(vi)],
                self._kv("gen_ai.usage.output_tokens", vo)[:-len(vo)])
        return heads[0] + vi + heads[1] + vo

    def _request_static(self, t: RequestTrace, provider_types: dict[str, str]) -> bytes:
        """The request span's name, kind, repeating attributes, flags and (if it did not fail) status."""
        attribute = self._attribute
        return b"".join((self._name(f"{t.op} {t.model}"), _KINDS[2],
                         *(attribute(k, v) for k, v in request_static(t, provider_types).items()),
                         b"" if t.message else b"\x7a\x00", _FLAGS_REMOTE if t.remote_parent else _FLAGS_LOCAL))

    def _attempt(self, t: RequestTrace, a: AttemptTrace, ctx: bytes, provider_types: dict[str, str]) -> bytes:
        """An attempt span's field: attempt_span(t, a)'s fields; `ctx`: trace id, state and parent."""
        key = attempt_key(t, a)
        static = self._statics.get(key)
        if static is None:
            static = self._static(key, self._attempt_static, t, a, provider_types)
        start, end = a.start_ns, a.end_ns or t.end_ns
        parts = [static, ctx, b"\x12\x08", _BE(a.span_id),
                 _TIMES(0x39, start, 0x41, end) if start and end else _times(start, end)]
        if a.input_tokens >= 0:
            parts.append(self._tokens(a.input_tokens, a.output_tokens))
        if a.error:
            parts.append(_ld(b"\x7a", _ld(b"\x12", (a.message or a.error).encode()) + b"\x18\x02"))
        body = b"".join(parts)
        n = len(body)
        return (_FIELD2[n] if n < _FIELD2_SIZE else b"\x12" + varint(n)) + body

    def _attempt_static(self, t: RequestTrace, a: AttemptTrace, provider_types: dict[str, str]) -> bytes:
        attribute = self._attribute
        return b"".join((self._name(f"{t.op} {a.model}"), _KINDS[3],
                         *(attribute(k, v) for k, v in attempt_static(t, a, provider_types).items()),
                         b"" if a.error else b"\x7a\x00", _FLAGS_LOCAL))

    def _static(self, key: Any, encode: Any, *args: Any) -> bytes:
        """`encode(*args)`, the fields that repeat across requests, encoded once per `key`."""
        out = self._statics.get(key)
        if out is None:
            if len(self._statics) >= _MEMO_LIMIT:
                self._statics.clear()
            out = self._statics[key] = encode(*args)
        return out

    def _stages(self, names: list[str]) -> _Stages:
        """The names; per stage its fixed fields (name, kind, status unset, flags, the span id's tag);
        the memo of stage span heads by the length of their trace's context fields."""
        key = tuple(names)
        stages = self._heads.get(key)
        if stages is None:
            tails = [self._name(n) + _KINDS[KIND_INTERNAL] + _STAGE_TAIL + b"\x12\x08" for n in names]
            stages = self._heads[key] = (names, tails, {})
        return stages
