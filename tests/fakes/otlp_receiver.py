"""A fake OTLP/HTTP collector: decodes the real protobuf (ExportTraceServiceRequest) into plain spans.

`discard=True` answers without decoding (the tracing benchmark's sink). Run standalone with
`python -m tests.fakes.otlp_receiver --port 4318 --discard`.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str
    start_ns: int
    end_ns: int
    status_code: int                      # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def decode(body: bytes) -> list[Span]:
    req = ExportTraceServiceRequest.FromString(body)
    out: list[Span] = []
    for rs in req.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(
                    name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(), kind=KINDS.get(s.kind, str(s.kind)),
                    start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano, status_code=s.status.code,
                    attributes={kv.key: _value(kv.value) for kv in s.attributes}, resource=resource))
    return out


class OTLPReceiver:
    def __init__(self, discard: bool = False) -> None:
        self.discard = discard
        self.spans: list[Span] = []
        self.exports = 0
        self.fail_next = 0                    # answer this many exports with 503 (the exporter must retry)
        self.headers: list[dict[str, str]] = []
        self.content_types: list[str] = []
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/traces", self.traces)
        self.server: Any = None

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.exports += 1
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=503, text="busy")
        if not self.discard:
            enc = request.headers.get("Content-Encoding", "")
            if enc == "gzip" and body[:2] == b"\x1f\x8b":      # aiohttp may have decompressed it already
                body = gzip.decompress(body)
            elif enc == "deflate" and body[:1] == b"\x78":
                body = zlib.decompress(body)
            self.content_types.append(request.headers.get("Content-Type", ""))
            self.spans.extend(decode(body))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def by_trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=4318)
    ap.add_argument("--discard", action="store_true")
    a = ap.parse_args()
    web.run_app(OTLPReceiver(discard=a.discard).app, host="127.0.0.1", port=a.port, access_log=None,
                print=None)
