"""OTLP export in a subprocess: batches of finished span records in, OTLP out through the official exporter.

Why a process: the SDK's span objects and OTLP encoding cost ~200 µs a span under the GIL, about as much
as the request itself. The proxy keeps plain records (`SpanRecord`) and hands each batch, msgpack-encoded,
to this process, which rebuilds `ReadableSpan`s and calls the official `OTLPSpanExporter` (HTTP or gRPC).
Nothing here ever blocks the event loop: a pump thread writes to the pipe, the child's reader thread
drains it into a bounded backlog, and a batch that finds either one full is dropped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing as mp
import os
import queue
import threading
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from proxy import __version__

FLUSH = b"F"                    # control message: the child answers b"F<dropped>" once all before it is exported
NICE = 10                       # the exporter's scheduling priority below the proxy's
MAX_PENDING = 4                 # batches waiting for the pump thread; more are dropped
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3      # OTLP SpanKind values
STATUS_ERROR = 2                                        # OTLP Status.code


class SpanRecord(msgspec.Struct, array_like=True, kw_only=True):
    """One span as the proxy records it: cheap to make, to fill and to msgpack."""

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


class ExportSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the child needs to build the exporter (a plain, picklable struct)."""

    endpoint: str
    protocol: str
    service_name: str
    headers: dict[str, str]
    export_timeout: float
    max_queue_size: int


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


def readable_spans(records: list[SpanRecord], service_name: str) -> list[Any]:
    """SDK ReadableSpans for the official encoder: exactly what the SDK's own spans would carry."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

    resource = _RESOURCES.get(service_name)
    if resource is None:
        resource = _RESOURCES[service_name] = Resource.create(
            {"service.name": service_name, "service.version": __version__})
    scope = InstrumentationScope("llm-service", __version__)
    kinds = {KIND_INTERNAL: SpanKind.INTERNAL, KIND_SERVER: SpanKind.SERVER, KIND_CLIENT: SpanKind.CLIENT}
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


_RESOURCES: dict[str, Any] = {}


def encode_request(records: list[SpanRecord], service_name: str) -> Any:
    """The ExportTraceServiceRequest the official encoder makes of `readable_spans(records)` (a test holds
    them equal), built with the official protobuf classes in place (`add()`) rather than through keyword
    constructors: ~5x less CPU a span."""
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_resource
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    readable_spans([], service_name)               # builds the Resource once
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.CopyFrom(_encode_resource(_RESOURCES[service_name]))
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "llm-service", __version__
    spans = ss.spans
    for r in records:
        s = spans.add()
        s.trace_id = bytes.fromhex(r.trace_id)
        s.span_id = r.span_id.to_bytes(8, "big")
        if r.trace_state:
            s.trace_state = r.trace_state
        if r.parent_id:
            s.parent_span_id = r.parent_id.to_bytes(8, "big")
        s.flags = 0x300 if r.remote_parent else 0x100     # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE (| IS_REMOTE)
        s.name, s.kind = r.name, r.kind
        s.start_time_unix_nano, s.end_time_unix_nano = r.start_ns, r.end_ns
        if r.attributes:
            _put_attributes(s.attributes, r.attributes)
        st = s.status
        st.SetInParent()
        if r.status:
            st.code, st.message = r.status, r.message
    return req


def _put_attributes(into: Any, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        kv = into.add()
        kv.key = k
        _put_value(kv.value, v)


def _put_value(out: Any, v: Any) -> None:
    t = v.__class__
    if t is str:
        out.string_value = v
    elif t is bool:
        out.bool_value = v
    elif t is int:
        out.int_value = v
    elif t is float:
        out.double_value = v
    elif t is bytes:
        out.bytes_value = v
    elif isinstance(v, list | tuple):
        values = out.array_value.values
        for x in v:
            _put_value(values.add(), x)
    elif isinstance(v, dict):
        _put_attributes(out.kvlist_value.values, v)
    elif v is not None:
        out.string_value = str(v)


def export_batch(exporter: Any, records: list[SpanRecord], service_name: str) -> None:
    """OTLP/HTTP: our request through the exporter's own HTTP client (retries, headers, compression,
    timeout). Elsewhere (gRPC, or an exporter version without that client): the SDK's own path."""
    client: Any = getattr(exporter, "_client", None)
    if hasattr(client, "export") and type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.http"):
        client.export(encode_request(records, service_name).SerializePartialToString())
    else:
        exporter.export(readable_spans(records, service_name))


def _child(conn: Connection, settings: ExportSettings) -> None:
    """The exporter process: a reader thread drains the pipe (so the proxy's writes never wait on an
    export), this thread exports. Exits when the proxy closes its end of the pipe (or dies).
    Niced: on a saturated host requests keep the CPU and the backlog drops spans instead."""
    with contextlib.suppress(OSError):
        os.nice(NICE)
    exporter = make_exporter(settings)
    decode = msgspec.msgpack.Decoder(list[SpanRecord]).decode
    backlog: collections.deque[Any] = collections.deque()
    held = [0, 0]                              # spans in the backlog, spans dropped
    cv = threading.Condition()

    def read() -> None:
        while True:
            try:
                msg: Any = conn.recv_bytes()
            except (EOFError, OSError):
                msg = None
            if msg is not None and msg[:1] != FLUSH:
                msg = decode(msg)
            with cv:
                if isinstance(msg, list) and held[0] + len(msg) > settings.max_queue_size:
                    held[1] += len(msg)        # the collector is slow or gone: drop, keep draining
                else:
                    if isinstance(msg, list):
                        held[0] += len(msg)
                    backlog.append(msg)
                    cv.notify()
            if msg is None:
                return

    threading.Thread(target=read, name="otlp-reader", daemon=True).start()
    try:
        while True:
            with cv:
                while not backlog:
                    cv.wait()
                item = backlog.popleft()
                if isinstance(item, list):
                    held[0] -= len(item)
            if item is None:
                break
            if not isinstance(item, list):
                conn.send_bytes(FLUSH + str(held[1]).encode())
                continue
            try:
                export_batch(exporter, item, settings.service_name)
            except Exception:          # an exporter bug must not end tracing: count the batch as dropped
                held[1] += len(item)
    finally:
        exporter.shutdown()


class ExportProcess:
    """The proxy's end: `send(batch)` never blocks; `flush()` waits for the child to catch up."""

    def __init__(self, settings: ExportSettings) -> None:
        self.settings = settings
        self.dropped = 0                                # spans dropped on this side
        self._proc: Any = None
        self._conn: Connection | None = None
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pump: threading.Thread | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        if self._proc is not None or self._closed:
            return
        ctx = mp.get_context("spawn")            # no fork of a running event loop and its sockets
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, self.settings), name="llm-service-otlp", daemon=True)
        self._proc.start()
        child.close()
        self._pump = threading.Thread(target=self._run_pump, name="otlp-pump", daemon=True)
        self._pump.start()

    def send(self, batch: list[SpanRecord]) -> None:
        if self._proc is None:
            self.start()
        if self._closed or self._queue.qsize() >= MAX_PENDING:
            self.dropped += len(batch)
            return
        self._queue.put(_ENCODE(batch))

    def _run_pump(self) -> None:
        conn = self._conn
        assert conn is not None
        while (msg := self._queue.get()) is not None:
            try:
                conn.send_bytes(msg)
            except OSError:                       # the child is gone: nothing more can be exported
                self._closed = True
        conn.close()

    async def flush(self, within: float = 10.0) -> bool:
        """True once the child has exported everything sent before this call."""
        if self._proc is None or self._closed:
            return False
        async with self._lock:
            self._queue.put(FLUSH)
            return await asyncio.to_thread(self._wait_ack, within)

    def _wait_ack(self, within: float) -> bool:
        conn = self._conn
        try:
            if conn is None or not conn.poll(within):
                return False
            return conn.recv_bytes()[:1] == FLUSH
        except (EOFError, OSError):
            return False

    async def close(self, within: float = 5.0) -> None:
        """Send what is left, close the pipe (the child exports the rest and exits), then reap it."""
        self._closed = True
        if self._proc is None:
            return
        self._queue.put(None)
        proc = self._proc
        await asyncio.to_thread(_reap, proc, self._pump, within)


def _reap(proc: Any, pump: threading.Thread | None, within: float) -> None:
    if pump is not None:
        pump.join(within)
    proc.join(within)
    if proc.is_alive():
        proc.terminate()
        proc.join(1)


_ENCODE = msgspec.msgpack.Encoder().encode
