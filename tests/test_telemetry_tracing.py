"""Traces end to end: proxy -> fake OTLP/HTTP collector decoding the real protobuf; traceparent upstream."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time

import aiohttp
import msgspec
import openai
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.config import TracingConfig
from proxy.gateway import GATEWAY
from proxy.telemetry.otlp_export import (
    BATCH,
    MESSAGE_HEAD,
    ExportSettings,
    batch_parts,
    encode_request,
    readable_spans,
)
from proxy.telemetry.otlp_process import ExportProcess
from proxy.telemetry.trace_record import (
    KIND_CLIENT,
    KIND_INTERNAL,
    KIND_SERVER,
    ROUTER,
    AttemptTrace,
    RequestTrace,
    SpanRecord,
    to_spans,
)
from proxy.telemetry.tracing import make_exporter, parse_traceparent, resolve
from tests.conftest import MASTER, make_config, openai_provider
from tests.fakes.otlp_receiver import OTLPReceiver

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
SECRET_PROMPT = "my very private prompt 12345"
_ENCODE = msgspec.msgpack.Encoder().encode


@pytest.fixture
async def receiver(aiohttp_server) -> OTLPReceiver:
    r = OTLPReceiver()
    r.server = await aiohttp_server(r.app)
    return r


def traced_config(receiver: OTLPReceiver, fake, record_content: bool = False, retries: int = 0):
    return make_config(
        providers={"up": openai_provider(fake), "dead": {"type": "openai", "base_url": "http://127.0.0.1:9/v1",
                                                          "api_key": "sk-dead-secret", "timeouts": {"connect": 1}},
                   "local": {"type": "mock"}},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]},
                {"name": "fb", "targets": [{"provider": "dead", "model": "gpt-4o-mini"},
                                           {"provider": "up", "model": "gpt-4o-mini"}]},
                {"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}],
        routing={"retries": retries},
        telemetry={"tracing": {"endpoint": str(receiver.server.make_url("/")).rstrip("/"),
                               "service_name": "llm-test", "record_content": record_content}},
    )


async def flush(server) -> None:
    tracing = server.app[GATEWAY].telemetry.tracing
    assert await tracing.flush(), "span export did not finish"


def client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)


async def test_streamed_request_trace_spans_parents_and_genai_attributes(start_proxy, fake_openai, receiver):
    server = await start_proxy(traced_config(receiver, fake_openai))
    stream = await client(server).chat.completions.create(
        model="gpt", stream=True, messages=[{"role": "user", "content": SECRET_PROMPT}],
        extra_headers={"traceparent": TRACEPARENT})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == fake_openai.reply
    await flush(server)

    spans = receiver.by_trace(CLIENT_TRACE)             # the client's trace id is kept
    names = [s.name for s in spans]
    # A span per stage an operator looks into; validation and the cost stage's set-up have none.
    assert set(names) == {"chat gpt", "chat gpt-4o-mini", "pipeline.auth", "pipeline.rate_limit",
                          "pipeline.accounting", "pipeline.cache"}, names
    assert len(names) == len(set(names))
    stages = {s.name: s for s in spans if s.name.startswith("pipeline.")}
    order = ["pipeline.auth", "pipeline.rate_limit", "pipeline.accounting", "pipeline.cache"]
    for a, b in itertools.pairwise(order):
        assert stages[a].start_ns <= stages[a].end_ns <= stages[b].start_ns, (a, b)
    assert [s.kind for s in spans].count("SERVER") == 1 and [s.kind for s in spans].count("CLIENT") == 1
    root = next(s for s in spans if s.kind == "SERVER")
    assert root.parent_span_id == CLIENT_PARENT          # child of the client's span
    assert root.resource["service.name"] == "llm-test"
    for s in spans:
        if s is not root:
            assert s.parent_span_id == root.span_id, s.name
    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.response.model"] == "gpt-4o-mini"
    assert a["gen_ai.usage.input_tokens"] == 11
    assert a["gen_ai.usage.output_tokens"] == len(fake_openai.reply.split())
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert 0 < a["gen_ai.response.time_to_first_chunk"] < 5
    assert a["gen_ai.request.stream"] is True
    assert a["http.response.status_code"] == 200
    assert a["llm_service.key_id"] == "master"
    assert a["llm_service.cache"] in ("miss", "bypass")
    assert root.status_code == 0

    attempt = next(s for s in spans if s.kind == "CLIENT")
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["llm_service.provider"] == "up"
    assert attempt.attributes["gen_ai.usage.output_tokens"] == len(fake_openai.reply.split())
    # The stream's spans end after its last byte, the attempt inside the request.
    assert root.start_ns <= attempt.start_ns <= attempt.end_ns <= root.end_ns
    # W3C context went upstream naming the attempt span; the provider's shared headers stayed clean.
    sent = fake_openai.headers[-1]
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"
    backend = server.app[GATEWAY].backends["up"]
    assert "traceparent" not in backend.provider.headers
    # Prompts and completions are not recorded unless configured.
    blob = orjson.dumps([s.attributes for s in receiver.spans]).decode()
    assert SECRET_PROMPT not in blob and fake_openai.reply not in blob and MASTER not in blob


async def test_fallback_shows_two_attempt_spans(start_proxy, fake_openai, receiver):
    server = await start_proxy(traced_config(receiver, fake_openai))
    reply = await client(server).chat.completions.create(
        model="fb", messages=[{"role": "user", "content": "hi"}], extra_headers={"traceparent": TRACEPARENT})
    assert reply.choices[0].message.content == fake_openai.reply
    await flush(server)
    spans = receiver.by_trace(CLIENT_TRACE)
    root = next(s for s in spans if s.kind == "SERVER")
    attempts = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
    assert [s.attributes["llm_service.provider"] for s in attempts] == ["dead", "up"]
    assert [s.attributes["llm_service.attempt"] for s in attempts] == [1, 2]
    assert all(s.parent_span_id == root.span_id for s in attempts)
    assert attempts[0].status_code == 2 and attempts[0].attributes["error.type"] == "upstream_error"
    assert attempts[1].status_code == 0
    assert root.attributes["llm_service.attempts"] == 2
    assert root.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert fake_openai.headers[-1]["traceparent"].split("-")[2] == attempts[1].span_id


async def test_the_span_count_handed_to_the_exporter_is_exact(start_proxy, fake_openai, receiver):
    """Batches carry their span count (the exporter's bound and the dropped-spans metric use it
    undecoded): it must match what reaches the collector, whatever path the requests took."""
    server = await start_proxy(traced_config(receiver, fake_openai))
    exporter = server.app[GATEWAY].telemetry.tracing.exporter
    counted: list[int] = []
    send = exporter.send
    exporter.send = lambda traces, spans: (counted.append(spans), send(traces, spans))[1]
    c = client(server)
    await c.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])   # 1 attempt
    await c.chat.completions.create(model="fb", messages=[{"role": "user", "content": "hi"}])    # 2 attempts
    stream = await c.chat.completions.create(model="mock", stream=True, messages=[{"role": "user", "content": "x"}])
    _ = [chunk async for chunk in stream]
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/v1/chat/completions"), json={},
                                                    headers={"Authorization": "Bearer sk-wrong-key-123"}) as r:
        assert r.status == 401                                                                   # auth raised
    await flush(server)
    assert len({sp.trace_id for sp in receiver.spans}) == 4
    assert sum(counted) == len(receiver.spans)


async def test_retries_on_the_same_target_each_get_a_span(start_proxy, fake_openai, receiver):
    server = await start_proxy(traced_config(receiver, fake_openai, retries=1))
    await client(server).chat.completions.create(model="fb", messages=[{"role": "user", "content": "hi"}])
    await flush(server)
    attempts = [s for s in receiver.spans if s.kind == "CLIENT"]
    assert sorted(s.attributes["llm_service.provider"] for s in attempts) == ["dead", "dead", "up"]
    assert len({s.trace_id for s in receiver.spans}) == 1      # a fresh trace when the client sent none


async def test_rejected_request_marks_the_stage_span(start_proxy, fake_openai, receiver):
    server = await start_proxy(traced_config(receiver, fake_openai))
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/v1/chat/completions"),
                                                    json={"model": "gpt", "messages": [{"role": "user",
                                                                                        "content": "x"}]},
                                                    headers={"Authorization": "Bearer sk-wrong-key-123"}) as r:
        assert r.status == 401
    await flush(server)
    auth = next(s for s in receiver.spans if s.name == "pipeline.auth")
    root = next(s for s in receiver.spans if s.kind == "SERVER")
    assert auth.status_code == 2 and auth.attributes["error.type"] == "invalid_api_key"
    assert root.attributes["http.response.status_code"] == 401
    assert root.attributes["error.type"] == "invalid_api_key"
    assert not any(s.kind == "CLIENT" for s in receiver.spans)      # no provider was called
    assert "sk-wrong-key-123" not in orjson.dumps([s.attributes for s in receiver.spans]).decode()


async def test_record_content_puts_prompt_and_completion_on_the_span(start_proxy, fake_openai, receiver):
    server = await start_proxy(traced_config(receiver, fake_openai, record_content=True))
    stream = await client(server).chat.completions.create(
        model="mock", stream=True, messages=[{"role": "user", "content": SECRET_PROMPT}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await flush(server)
    root = next(s for s in receiver.spans if s.kind == "SERVER")
    assert SECRET_PROMPT in root.attributes["gen_ai.input.messages"]
    assert orjson.loads(root.attributes["gen_ai.output.messages"]) == [{"role": "assistant", "content": text}]
    assert root.attributes["gen_ai.provider.name"] == "mock"


async def test_tracing_off_forwards_the_client_traceparent_unchanged(proxy_to_fake, fake_openai):
    assert proxy_to_fake.app[GATEWAY].telemetry.tracing is None
    await client(proxy_to_fake).chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
    assert fake_openai.headers[-1]["traceparent"] == TRACEPARENT
    assert fake_openai.headers[-1]["tracestate"] == "vendor=1"


def test_settings_follow_otel_environment_and_config_wins():
    off = TracingConfig()
    assert resolve(off, env={}) is None
    s = resolve(off, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SERVICE_NAME": "svc",
                          "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert s is not None and s.service_name == "svc" and s.sample_ratio == 0.25 and s.endpoint == ""
    assert resolve(off, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}) is None
    cfg = TracingConfig(endpoint="http://jaeger:4317", protocol="grpc", service_name="mine", sample_ratio=0.5)
    s = resolve(cfg, env={"OTEL_SERVICE_NAME": "svc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert s is not None and (s.protocol, s.service_name, s.sample_ratio) == ("grpc", "mine", 0.5)
    exporter = make_exporter(s)
    assert type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    exporter.shutdown()
    s = resolve(TracingConfig(endpoint="http://jaeger:4318"), env={})
    assert s is not None
    http = make_exporter(s)
    assert http._endpoint == "http://jaeger:4318/v1/traces"     # a base URL, like OTEL_EXPORTER_OTLP_ENDPOINT
    http.shutdown()


async def test_a_dead_collector_never_blocks_requests(start_proxy):
    cfg = make_config(telemetry={"tracing": {"endpoint": "http://127.0.0.1:9", "export_timeout": 0.5,
                                             "max_queue_size": 8}})
    server = await start_proxy(cfg)
    c = client(server)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(20):
        await c.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])
    assert loop.time() - t0 < 5
    tracing = server.app[GATEWAY].telemetry.tracing
    await tracing.flush(10)
    assert tracing.dropped > 0                        # more than max_queue_size: counted, never waited for


async def test_an_unsampled_traceparent_records_nothing_and_passes_through(start_proxy, fake_openai, receiver):
    server = await start_proxy(traced_config(receiver, fake_openai))
    unsampled = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00"
    await client(server).chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "hi"}], extra_headers={"traceparent": unsampled})
    await flush(server)
    assert receiver.spans == []
    assert fake_openai.headers[-1]["traceparent"] == unsampled      # the client's decision travels on


def test_traceparent_parsing_follows_w3c():
    assert parse_traceparent(TRACEPARENT) == (CLIENT_TRACE, int(CLIENT_PARENT, 16), True)
    assert parse_traceparent(f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00")[2] is False     # type: ignore[index]
    for bad in ("", "garbage", f"ff-{CLIENT_TRACE}-{CLIENT_PARENT}-01", f"00-{'0' * 32}-{CLIENT_PARENT}-01",
                f"00-{CLIENT_TRACE}-{'0' * 16}-01", f"00-{CLIENT_TRACE.upper()}-{CLIENT_PARENT}-01",
                f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01-extra"):
        assert parse_traceparent(bad) is None, bad
    assert parse_traceparent(f"01-{CLIENT_TRACE}-{CLIENT_PARENT}-01-future") is not None   # later versions may extend


def test_fast_encoding_equals_the_official_encoder():
    """The exporter process builds the OTLP request itself; it must be what the SDK's encoder makes."""
    records = [
        SpanRecord(name="chat gpt", kind=KIND_SERVER, trace_id=CLIENT_TRACE, span_id=1, parent_id=7, start_ns=10,
                   end_ns=20, remote_parent=True, trace_state="vendor=1", status=2, message="boom",
                   attributes={"s": "x", "i": 3, "f": 0.5, "b": True, "l": ["stop", "length"], "neg": -5,
                               "zero": 0, "no": False, "big": 2**40, "empty": "", "d": {"k": 1}, "u": "é✓"}),
        SpanRecord(name="pipeline.auth", kind=KIND_INTERNAL, trace_id=CLIENT_TRACE, span_id=2, parent_id=1,
                   start_ns=11, end_ns=12),
        SpanRecord(name="chat gpt-4o", kind=KIND_CLIENT, trace_id="1" * 32, span_id=3, start_ns=1, end_ns=2,
                   attributes={"gen_ai.usage.input_tokens": 11}),
    ]
    ours = encode_request(records, "svc")
    official = encode_spans(readable_spans(records, "svc"))
    assert ExportTraceServiceRequest.FromString(ours) == official
    assert ours == official.SerializeToString(deterministic=True)
    again = encode_request(records, "svc")                 # memoised parts give the same bytes
    assert again == ours


def test_trace_records_encode_to_the_bytes_of_their_spans():
    """The exporter writes a stage span from a template; it must equal encoding the span itself."""
    names = ["pipeline.cache", "pipeline.rate_limit", "pipeline.auth"]
    base = RequestTrace(trace_id=CLIENT_TRACE, span_id=5, parent_id=7, remote_parent=True, trace_state="v=1",
                        start_ns=10, op="chat", model="gpt", request_id="r1", ingress="rest",
                        request_attrs={"gen_ai.request.max_tokens": 16}, marks=[4, 11, 2, 12, 0, 13, ROUTER, 14],
                        attempts=[AttemptTrace(span_id=9, start_ns=14, provider="up", model="gpt-4o", number=1,
                                               end_ns=18, error="upstream_error", message="boom"),
                                  AttemptTrace(span_id=10, start_ns=18, provider="up", model="gpt-4o", number=2,
                                               end_ns=19, input_tokens=3, output_tokens=4)],
                        end_ns=20, status=200, n_attempts=2, provider="up", usage=(3, 4, 1), cost=0.5,
                        finish_reasons=["stop"], ttft=0.25, cache="miss", key_id="master")
    traces = [base,
              msgspec.structs.replace(base, trace_id="2" * 32, trace_state="", remote_parent=False, parent_id=0,
                                      marks=[4, 11, 5, 12], stage_error=(2, "invalid_api_key", "bad"), attempts=[],
                                      status=401, error="invalid_api_key", message=""),
              msgspec.structs.replace(base, trace_id="3" * 32, marks=[4, 11, 2, 12], attempts=[],   # still open
                                      input_messages='[{"role":"user","content":"é"}]', output_messages="x" * 300,
                                      usage=(300, 2**20, 0), ttft=None, cost=None, status=503, error="503",
                                      message="upstream down")]
    from proxy.telemetry.otlp_export import wire_encoder

    def ids():
        n = iter(range(1000, 2000))
        return lambda: next(n)

    direct = wire_encoder("svc").traces(traces, names, {"up": "openai"}, ids())
    again = wire_encoder("svc").traces(traces, names, {"up": "openai"}, ids())      # memoised parts
    new_id = ids()
    swapped = lambda: int.from_bytes(new_id().to_bytes(8, "little"), "big")  # noqa: E731  stage ids: little-endian
    spans = [r for t in traces for r in to_spans(t, names, {"up": "openai"}, swapped)]
    official = encode_spans(readable_spans(spans, "svc"))
    assert ExportTraceServiceRequest.FromString(direct) == official == ExportTraceServiceRequest.FromString(again)
    assert ExportTraceServiceRequest.FromString(encode_request(spans, "svc")) == official
    assert len(direct) == len(official.SerializeToString())
    assert len(spans) == (1 + 3 + 2) + (1 + 1) + (1 + 2)


def _settings(endpoint: str, max_queue_size: int = 2048) -> ExportSettings:
    return ExportSettings(endpoint=endpoint, protocol="http/protobuf", service_name="t", headers={},
                          export_timeout=0.5, max_queue_size=max_queue_size)


def _batch(n: int) -> list[RequestTrace]:
    return [RequestTrace(trace_id=CLIENT_TRACE, span_id=i + 1, parent_id=0, remote_parent=False, trace_state="",
                         start_ns=1, op="chat", model="m" * 200, request_id=f"req_{i}", ingress="rest",
                         request_attrs={"pad": "x" * 2000}, end_ns=2) for i in range(n)]


async def test_a_stuck_exporter_drops_spans_and_never_blocks():
    proc = ExportProcess(_settings("http://127.0.0.1:9"))
    await proc.start()
    try:
        assert await proc.flush(30)                       # up and answering
        os.kill(proc.pid, signal.SIGSTOP)                 # frozen: reads nothing, the pipe fills
        slowest = 0.0
        for _ in range(200):
            t0 = time.perf_counter()
            proc.send([_ENCODE(t) for t in _batch(50)], 50)
            slowest = max(slowest, time.perf_counter() - t0)
        assert proc.dropped > 0
        assert slowest < 0.05
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await proc.close()
    assert not proc.alive


def test_a_batch_of_encoded_traces_is_one_message():
    for n in (0, 3, 15, 16, 300):
        traces = _batch(n)
        body = b"".join(batch_parts([_ENCODE(t) for t in traces], 7 * n))
        assert MESSAGE_HEAD.unpack_from(body) == (BATCH, 7 * n)
        assert msgspec.msgpack.decode(body[MESSAGE_HEAD.size:], type=list[RequestTrace]) == traces


def test_trace_records_become_the_spans_they_stand_for():
    """Marks: auth (k=1) hands on to cache (k=0), which answers without handing on; then a rejected
    request's auth span carries the error; attempts become CLIENT spans under the request."""
    names = ["pipeline.cache", "pipeline.auth"]
    ids = iter(range(100, 200))
    hit = RequestTrace(trace_id=CLIENT_TRACE, span_id=5, parent_id=7, remote_parent=True, trace_state="",
                       start_ns=10, op="chat", model="gpt", request_id="r", ingress="rest", request_attrs={},
                       marks=[2, 11, 0, 12, 1, 15], end_ns=20, status=200, cache="hit")
    spans = {s.name: s for s in to_spans(hit, names, {}, lambda: next(ids))}
    assert (spans["pipeline.auth"].start_ns, spans["pipeline.auth"].end_ns) == (11, 12)
    assert (spans["pipeline.cache"].start_ns, spans["pipeline.cache"].end_ns) == (12, 15)
    assert spans["chat gpt"].attributes["llm_service.cache"] == "hit" and spans["chat gpt"].parent_id == 7
    assert all(s.parent_id == 5 for n, s in spans.items() if n != "chat gpt")
    rejected = msgspec.structs.replace(hit, marks=[2, 11, 3, 13], stage_error=(1, "invalid_api_key", "bad key"),
                                       status=401, error="invalid_api_key", cache=None)
    [root, auth] = to_spans(rejected, names, {}, lambda: next(ids))
    assert auth.name == "pipeline.auth" and auth.end_ns == 13 and auth.status == 2
    assert auth.attributes == {"error.type": "invalid_api_key"} and root.attributes["error.type"] == "invalid_api_key"
    routed = msgspec.structs.replace(hit, marks=[2, 11, 0, 12, ROUTER, 14], attempts=[
        AttemptTrace(span_id=9, start_ns=14, provider="up", model="gpt-4o", number=1, end_ns=18,
                     input_tokens=3, output_tokens=4)], provider="up", usage=(3, 4, 0))
    spans = {s.name: s for s in to_spans(routed, names, {"up": "azure"}, lambda: next(ids))}
    assert spans["pipeline.cache"].end_ns == 14
    attempt = spans["chat gpt-4o"]
    assert attempt.kind == KIND_CLIENT and attempt.span_id == 9 and attempt.parent_id == 5
    assert attempt.attributes["gen_ai.provider.name"] == "azure.ai.openai"
    assert attempt.attributes["gen_ai.usage.output_tokens"] == 4


async def test_a_cache_hit_trace_has_stage_spans_and_no_attempt(start_proxy, fake_openai, receiver):
    cfg = traced_config(receiver, fake_openai)
    server = await start_proxy(msgspec.structs.replace(cfg, cache=msgspec.structs.replace(cfg.cache, mode="all")))
    for _ in range(2):
        await client(server).chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}],
                                                     extra_headers={"traceparent": TRACEPARENT})
    await flush(server)
    roots = sorted((s for s in receiver.by_trace(CLIENT_TRACE) if s.kind == "SERVER"), key=lambda s: s.start_ns)
    assert [r.attributes["llm_service.cache"] for r in roots] == ["miss", "hit"]
    hit = [s for s in receiver.spans if s.parent_span_id == roots[1].span_id]
    assert "pipeline.cache" in {s.name for s in hit} and not any(s.kind == "CLIENT" for s in hit)
    cache_span = next(s for s in hit if s.name == "pipeline.cache")
    assert cache_span.status_code == 0 and roots[1].start_ns <= cache_span.start_ns <= cache_span.end_ns <= roots[1].end_ns
    assert fake_openai.requests and len(fake_openai.requests) == 1


async def test_the_exporter_process_exports_the_rest_and_exits_on_cleanup(aiohttp_server, fake_openai, receiver):
    from proxy.app import build_app
    server = await aiohttp_server(build_app(traced_config(receiver, fake_openai)))
    tracing = server.app[GATEWAY].telemetry.tracing
    pid = tracing.exporter.pid
    assert pid is not None and tracing.exporter.alive          # started with the app, before any request
    await client(server).chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    await server.close()                                       # app cleanup: last batch, close the pipe, join
    assert not tracing.exporter.alive
    assert tracing.exporter.exitcode == 0
    assert any(s.kind == "SERVER" for s in receiver.spans)     # the last batch was exported on the way out


def _sse(choice: int, content: str, reason: str | None, model: str = "m-1") -> bytes:
    delta = {"index": choice, "delta": {"content": content}, "finish_reason": reason}
    return b"data: " + orjson.dumps({"id": "c", "model": model, "choices": [delta]}) + b"\n\n"


def test_stream_facts_read_the_last_reason_of_one_choice_and_all_of_several():
    from proxy.telemetry.facts import stream_facts

    words = [_sse(0, "w ", None) for _ in range(10)]
    one = [*words, _sse(0, "", "stop"), b"data: [DONE]\n\n"]
    assert stream_facts(one, 1) == (["stop"], "m-1")
    # Two choices, the first finished long before the end: every reason is read, in stream order.
    two = [_sse(1, "a", None), _sse(1, "", "length"), *words, _sse(0, "", "stop"), b"data: [DONE]\n\n"]
    assert stream_facts(two, 2) == (["length", "stop"], "m-1")
    # Raw network reads cut events anywhere; the chunks are read as one.
    raw = b"".join(two)
    assert stream_facts([raw[i:i + 7] for i in range(0, len(raw), 7)], 2) == (["length", "stop"], "m-1")
    # A stream cut short ends on a null reason: the reasons before it still count.
    cut = [_sse(0, "", "length", model="m-2"), _sse(0, "w", None)]
    assert stream_facts(cut, 1) == (["length"], "m-2")
    # The model of the first event, even with spaces around the colon.
    spaced = [b'data: {"id": "x", "model" : "m-3", "choices": [{"finish_reason" : "stop"}]}\n\n', *one]
    assert stream_facts(spaced, 1) == (["stop"], "m-3")
    assert stream_facts([], 1) == ([], None)


async def test_served_proxy_hands_batches_to_its_exporter_over_uvloop(receiver, tmp_path):
    """`llm-service serve` runs on uvloop, whose pipe transport writes a hand-off's parts (head, then each
    trace's bytes) with one writev: every request's spans arrive, whole, under their own request span."""
    import subprocess
    import sys

    from tests.test_shutdown import _free_port, _wait_up

    port = _free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(orjson.dumps({
        "server": {"port": port, "master_key": MASTER, "log_level": "warning"},
        "storage": {"database": f"sqlite:///{tmp_path}/ledger.db"},
        "providers": {"local": {"type": "mock"}},
        "models": [{"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}],
        "telemetry": {"tracing": {"endpoint": str(receiver.server.make_url("/")), "sample_ratio": 1.0}},
    }).decode())
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_up(url)
        async with aiohttp.ClientSession() as s:
            body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
            ids = []
            for i in range(40):
                async with s.post(url + "/v1/chat/completions", json={**body, "stream": i % 2 == 1},
                                  headers={"Authorization": f"Bearer {MASTER}"}) as r:
                    assert r.status == 200
                    await r.read()
                    ids.append(r.headers["x-request-id"])
        for _ in range(150):                    # the exporter's batch waits up to 0.5 s, its export a moment
            if len([x for x in receiver.spans if x.kind == "SERVER"]) >= 40:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
    roots = [x for x in receiver.spans if x.kind == "SERVER"]
    assert sorted(x.attributes["llm_service.request_id"] for x in roots) == sorted(ids)
    for root in roots:
        spans = receiver.by_trace(root.trace_id)
        assert {x.name for x in spans} >= {"chat mock", "pipeline.auth", "pipeline.cache"}
        assert all(x.parent_span_id == root.span_id for x in spans if x is not root)
        assert root.attributes["gen_ai.response.finish_reasons"] == ["stop"]
