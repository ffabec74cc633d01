"""OTLP encoding and the messages between the proxy and its span exporter process (otlp_child.py).

`encode_request` writes the ExportTraceServiceRequest (otlp_wire.py) and `export_batch` sends it through
the official exporter's HTTP client; gRPC (or an exporter without that client) takes the SDK's own path
from `readable_spans`.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from proxy import __version__
from proxy.telemetry.otlp_wire import WireEncoder
from proxy.telemetry.trace_record import RequestTrace, SpanRecord, to_spans

FLUSH = 0                       # message kind: answer once everything sent before is exported
BATCH = 1                       # message kind: request traces to export
MESSAGE_HEAD = struct.Struct(">BI")     # kind, spans in it; then (BATCH) a msgpack array of RequestTraces


def batch_parts(traces: list[bytes], spans: int) -> list[bytes]:
    """A BATCH message from traces msgpack-encoded one by one, as parts to write one after another: its
    head (the child's reader learns the size in spans without decoding; decoding is the export thread's
    work) and the traces as they are. Never joined: a fresh 256 KB buffer each hand-off cost the proxy
    ~0.15 page faults a request."""
    n = len(traces)
    array = bytes((0x90 | n,)) if n < 16 else (b"\xdc" + struct.pack(">H", n) if n < 65536
                                                 else b"\xdd" + struct.pack(">I", n))
    return [MESSAGE_HEAD.pack(BATCH, spans) + array, *traces]


FLUSH_MESSAGE = MESSAGE_HEAD.pack(FLUSH, 0)


class ExportSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the child needs: the exporter's settings, and what trace records' numbers and names mean."""

    endpoint: str
    protocol: str
    service_name: str
    headers: dict[str, str]
    export_timeout: float
    max_queue_size: int                                  # spans held in the backlog; beyond it dropped
    provider_types: dict[str, str] = {}                  # provider name -> type (gen_ai.provider.name)
    stage_names: list[str] = []                          # stage spans' names, by binding order


class FlushAck(msgspec.Struct, array_like=True):
    dropped: int                 # spans dropped in this process so far
    flushed: bool = True         # False: only news of drops (sent when a batch is dropped), not an answer


def make_exporter(s: Any) -> Any:
    """The official OTLP exporter; an empty endpoint lets it read OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT."""
    headers = s.headers or None
    if s.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        return GrpcExporter(endpoint=s.endpoint or None, headers=headers, timeout=s.export_timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    url = s.endpoint
    if url and not url.rstrip("/").endswith("/v1/traces"):
        url = url.rstrip("/") + "/v1/traces"      # config takes a base URL, like OTEL_EXPORTER_OTLP_ENDPOINT
    return HttpExporter(endpoint=url or None, headers=headers, timeout=s.export_timeout)


_RESOURCES: dict[str, Any] = {}


def _resource(service_name: str) -> Any:
    from opentelemetry.sdk.resources import Resource

    resource = _RESOURCES.get(service_name)
    if resource is None:
        resource = _RESOURCES[service_name] = Resource.create(
            {"service.name": service_name, "service.version": __version__})
    return resource


def readable_spans(records: list[SpanRecord], service_name: str) -> list[Any]:
    """SDK ReadableSpans for the official encoder: exactly what the SDK's own spans would carry."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

    resource = _resource(service_name)
    scope = InstrumentationScope("llm-service", __version__)
    kinds = {1: SpanKind.INTERNAL, 2: SpanKind.SERVER, 3: SpanKind.CLIENT}
    sampled = TraceFlags(TraceFlags.SAMPLED)
    out = []
    for r in records:
        tid = int(r.trace_id, 16)
        state = TraceState.from_header([r.trace_state]) if r.trace_state else None
        parent = SpanContext(tid, r.parent_id, r.remote_parent, sampled, state) if r.parent_id else None
        out.append(ReadableSpan(
            name=r.name, context=SpanContext(tid, r.span_id, False, sampled, state), parent=parent,
            resource=resource, attributes=r.attributes or {}, kind=kinds.get(r.kind, SpanKind.INTERNAL),
            status=Status(StatusCode(r.status), r.message or None) if r.status else Status(StatusCode.UNSET),
            start_time=r.start_ns, end_time=r.end_ns, instrumentation_scope=scope))
    return out


_ENCODERS: dict[str, WireEncoder] = {}


def wire_encoder(service_name: str) -> WireEncoder:
    enc = _ENCODERS.get(service_name)
    if enc is None:
        from opentelemetry.exporter.otlp.proto.common._internal import _encode_resource

        resource = _encode_resource(_resource(service_name)).SerializeToString(deterministic=True)
        enc = _ENCODERS[service_name] = WireEncoder(resource, "llm-service", __version__)
    return enc


def encode_request(records: list[SpanRecord], service_name: str) -> bytes:
    """The ExportTraceServiceRequest bytes the official encoder makes of `readable_spans(records)` (a test
    holds them equal), written directly (otlp_wire.py)."""
    return wire_encoder(service_name).request(records)


def export_batch(exporter: Any, traces: list[RequestTrace], s: ExportSettings, new_id: Any) -> None:
    """OTLP/HTTP: our request bytes through the exporter's own HTTP client (retries, headers, compression,
    timeout). Elsewhere (gRPC, or an exporter version without that client): the SDK's own path."""
    client: Any = getattr(exporter, "_client", None)
    if hasattr(client, "export") and type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.http"):
        client.export(wire_encoder(s.service_name).traces(traces, s.stage_names, s.provider_types, new_id))
    else:
        records = [r for t in traces for r in to_spans(t, s.stage_names, s.provider_types, new_id)]
        exporter.export(readable_spans(records, s.service_name))
