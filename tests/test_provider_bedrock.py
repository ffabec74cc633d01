"""Bedrock adapter: event-stream decoding, request bodies checked against botocore's own model, SigV4
verified by recomputation, and end to end through the proxy with the official openai SDK."""

from __future__ import annotations

import base64
import copy
import json
import random
import struct
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.loaders import Loader
from botocore.model import ServiceModel
from botocore.validate import ParamValidator

from proxy.config import ConfigError, Target, parse
from proxy.context import ChatCall
from proxy.errors import InvalidRequest, UpstreamError
from proxy.providers.aws_eventstream import EventStreamDecoder
from proxy.providers.bedrock import BedrockProvider
from tests.conftest import MASTER, make_config
from tests.fakes.bedrock_upstream import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    FakeBedrock,
    encode_message,
    event,
    stream_events,
    verify_sigv4,
)

FIXTURES = Path(__file__).parent / "fixtures" / "bedrock"
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
MSG = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_BLOCKS = [{"text": "Checking."},
               {"toolUse": {"toolUseId": "tooluse_a", "name": "get_weather", "input": {"city": "Paris"}}},
               {"toolUse": {"toolUseId": "tooluse_b", "name": "get_weather", "input": {"city": "Rome"}}}]


def provider(**settings: Any) -> BedrockProvider:
    raw = {"type": "bedrock", "region": REGION, "base_url": "http://127.0.0.1:1",
           "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, **settings}
    cfg = parse({"providers": {"b": raw}, "models": []}, env={})
    return BedrockProvider(cfg.providers["b"])


def chat(body: dict[str, Any], endpoint: str = "chat.completions") -> ChatCall:
    return ChatCall(body=body, model=body.get("model", ""), stream=bool(body.get("stream")), endpoint=endpoint)


# -- event stream ------------------------------------------------------------------------------------

def test_decoder_matches_botocore_at_any_split() -> None:
    rng = random.Random(7)
    raw = b"".join(stream_events(TOOL_BLOCKS, "tool_use", {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}))
    raw += encode_message({":message-type": "event", ":event-type": "empty"}, b"")
    ref = EventStreamBuffer()
    ref.add_data(raw)
    want = [(dict(m.headers), m.payload) for m in ref]
    for _ in range(50):
        dec, got, pos = EventStreamDecoder(), [], 0
        while pos < len(raw):
            step = rng.randint(1, 40)
            got += [(m.headers, m.payload) for m in dec.feed(raw[pos:pos + step])]
            pos += step
        assert got == want
        assert dec.pending == 0


def test_decoder_reads_every_header_type() -> None:
    headers = (b"\x01a\x00" + b"\x01b\x01" + b"\x01c\x02\xff" + b"\x01d\x03" + struct.pack(">h", -2)
               + b"\x01e\x04" + struct.pack(">i", 70000) + b"\x01f\x05" + struct.pack(">q", -5)
               + b"\x01g\x06\x00\x02\x00\x01" + b"\x01h\x08" + struct.pack(">q", 1700000000000)
               + b"\x01i\x09" + bytes(range(16)))
    import zlib
    total = 12 + len(headers) + 3 + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + headers + b"xyz"
    msg += struct.pack(">I", zlib.crc32(msg))
    (m,) = EventStreamDecoder().feed(msg)
    assert m.headers == {"a": True, "b": False, "c": -1, "d": -2, "e": 70000, "f": -5, "g": b"\x00\x01",
                         "h": 1700000000000, "i": "00010203-0405-0607-0809-0a0b0c0d0e0f"}
    assert m.payload == b"xyz"


def test_decoder_rejects_bad_crcs_and_lengths() -> None:
    good = event("messageStart", {"role": "assistant"})
    bad_payload = bytearray(good)
    bad_payload[-6] ^= 1
    with pytest.raises(UpstreamError, match="message checksum"):
        EventStreamDecoder().feed(bytes(bad_payload))
    bad_prelude = bytearray(good)
    bad_prelude[3] ^= 1
    with pytest.raises(UpstreamError, match="prelude checksum"):
        EventStreamDecoder().feed(bytes(bad_prelude))
    huge = struct.pack(">II", 1 << 30, 0)
    with pytest.raises(UpstreamError, match="impossible"):
        import zlib
        EventStreamDecoder().feed(huge + struct.pack(">I", zlib.crc32(huge)))


def test_stream_cut_short_raises() -> None:
    p = provider()
    raw = b"".join(stream_events([{"text": "a b"}], "end_turn", {"inputTokens": 1, "outputTokens": 2,
                                                               "totalTokens": 3}))
    cut = p.new_stream(chat({"stream": True}), Target(provider="b", model=CLAUDE))
    cut.feed(raw[:-7])
    with pytest.raises(UpstreamError, match="middle of an event"):
        cut.finish()
    early = p.new_stream(chat({"stream": True}), Target(provider="b", model=CLAUDE))
    early.feed(event("messageStart", {"role": "assistant"}))
    with pytest.raises(UpstreamError, match="before messageStop"):
        early.finish()


# -- request bodies against botocore's service model ---------------------------------------------------

def _converse_shapes() -> dict[str, Any]:
    model = ServiceModel(Loader().load_service_model("bedrock-runtime", "service-2"), "bedrock-runtime")
    return {op: model.operation_model(op).input_shape for op in ("Converse", "ConverseStream")}


def _blobs_to_bytes(body: Any) -> Any:
    """The JSON protocol carries blobs as base64 text; botocore's params carry bytes."""
    body = copy.deepcopy(body)
    for m in body.get("messages", []):
        for block in m["content"]:
            if "image" in block:
                block["image"]["source"]["bytes"] = base64.b64decode(block["image"]["source"]["bytes"])
    return body


def _enum_errors(value: Any, shape: Any, path: str = "") -> list[str]:
    """botocore's ParamValidator skips enums (roles, image formats, stop reasons): check them here."""
    if shape.type_name == "structure" and isinstance(value, dict):
        return [e for k, v in value.items() if k in shape.members
                for e in _enum_errors(v, shape.members[k], f"{path}.{k}" if path else k)]
    if shape.type_name == "list" and isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _enum_errors(v, shape.member, f"{path}[{i}]")]
    if shape.type_name == "string" and shape.enum and value not in shape.enum:
        return [f"{path}: {value!r}"]
    return []


def _wire_bodies() -> list[tuple[str, dict[str, Any], str]]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        case = json.loads(path.read_text())
        url = case.get("wire_request", {}).get("url", "")
        if url.endswith(("/converse", "/converse-stream")):
            out.append((path.stem, case["wire_request"]["body"], case["target_model"]))
    return out


def test_wire_bodies_validate_against_botocore_model() -> None:
    shapes = _converse_shapes()
    validator = ParamValidator()
    cases = _wire_bodies()
    assert len(cases) >= 5
    # ...and a body built by the adapter right now with every feature at once.
    p = provider()
    body = {"model": "c", "max_tokens": 10, "temperature": 0.1, "top_p": 0.5, "stop": ["x"], "tools": [WEATHER],
            "tool_choice": "required",
            "messages": [{"role": "system", "content": "s"},
                         {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url",
                          "image_url": {"url": "data:image/webp;base64,UklGRg=="}}]},
                         {"role": "assistant", "content": "ok", "tool_calls": [{"id": "t1", "type": "function",
                          "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                         {"role": "tool", "tool_call_id": "t1", "content": "cold"}]}
    wire = p.to_wire(chat(body), Target(provider="b", model=CLAUDE))
    cases.append(("adapter", orjson.loads(wire.body or b""), CLAUDE))
    for name, wire_body, model in cases:
        params = {"modelId": model, **_blobs_to_bytes(wire_body)}
        op = "ConverseStream" if name in ("stream_parallel_tools", "tool_choice_required_arn") else "Converse"
        report = validator.validate(params, shapes[op])
        assert not report.has_errors(), (name, report.generate_report())
    # The validator does catch a wrong shape (so the loop above can fail).
    for bad_block in ({"image": {"source": {"bytes": b""}}}, {"image_url": {"url": "x"}}):
        bad = {"modelId": CLAUDE, "messages": [{"role": "user", "content": [bad_block]}]}
        assert validator.validate(bad, shapes["Converse"]).has_errors(), bad_block
    bad = {"modelId": CLAUDE, "messages": [{"role": "user", "content": [{"image": {"format": "bmp"}}]}]}
    assert _enum_errors(bad, shapes["Converse"]) == ["messages[0].content[0].image.format: 'bmp'"]


# -- SigV4 -------------------------------------------------------------------------------------------

def test_sigv4_header_is_well_formed_and_verifies() -> None:
    p = provider(aws_session_token="FQoGZXIvYXdzEXAMPLE")
    wire = p.to_wire(chat({"model": "c", "messages": MSG}), Target(provider="b", model=CLAUDE))
    auth = wire.headers["Authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert f"/{REGION}/bedrock/aws4_request, SignedHeaders=" in auth
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "x-amz-security-token", "content-type"} <= set(signed)
    assert wire.headers["X-Amz-Security-Token"] == "FQoGZXIvYXdzEXAMPLE"
    assert SECRET_KEY not in json.dumps(wire.headers)
    u = urlsplit(wire.url)
    assert u.path == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse" and wire.raw_url
    assert verify_sigv4("POST", u.netloc, u.path, wire.headers, wire.body or b"") is None
    # Any change to what was signed breaks it: body, path, or the secret.
    assert verify_sigv4("POST", u.netloc, u.path, wire.headers, (wire.body or b"") + b" ") is not None
    assert verify_sigv4("POST", u.netloc, u.path.replace("%3A", ":"), wire.headers, wire.body or b"") is not None
    assert verify_sigv4("POST", u.netloc, u.path, wire.headers, wire.body or b"", secret="other") is not None


def test_default_credential_chain_from_environment(monkeypatch) -> None:
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    p = provider(aws_access_key_id="", aws_secret_access_key="")
    wire = p.to_wire(chat({"model": "c", "messages": MSG}), Target(provider="b", model=CLAUDE))
    u = urlsplit(wire.url)
    assert verify_sigv4("POST", u.netloc, u.path, wire.headers, wire.body or b"") is None
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(UpstreamError, match="no AWS credentials") as info:
        p.to_wire(chat({"model": "c", "messages": MSG}), Target(provider="b", model=CLAUDE))
    assert info.value.status == 502 and info.value.code == "provider_key_missing"


async def test_prepare_resolves_the_full_chain_off_the_loop(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-from-env")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    p = provider(aws_access_key_id="", aws_secret_access_key="")
    target = Target(provider="b", model=CLAUDE)
    await p.prepare(target, None)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")          # resolved once: later requests do not re-read the env
    wire = p.to_wire(chat({"model": "c", "messages": MSG}), target)
    assert wire.headers["X-Amz-Security-Token"] == "session-token-from-env"
    u = urlsplit(wire.url)
    assert verify_sigv4("POST", u.netloc, u.path, wire.headers, wire.body or b"") is None


def test_missing_botocore_is_a_clear_config_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "botocore.auth", None)
    with pytest.raises(ConfigError, match=r"providers\.b: .*pip install 'llm-service\[bedrock\]'"):
        provider()
    p = provider(api_key="bedrock-api-key")          # a Bedrock API key needs no botocore
    wire = p.to_wire(chat({"model": "c", "messages": MSG}), Target(provider="b", model=CLAUDE))
    assert wire.headers["Authorization"] == "Bearer bedrock-api-key"


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"providers\.b\.region: required"):
        parse({"providers": {"b": {"type": "bedrock"}}}, env={})
    with pytest.raises(ConfigError, match="must be set together"):
        parse({"providers": {"b": {"type": "bedrock", "region": "x", "aws_access_key_id": "A"}}}, env={})
    cfg = parse({"providers": {"b": {"type": "bedrock", "region": "${R}", "aws_access_key_id": "${K}",
                                     "aws_secret_access_key": "${S}"}}}, env={"R": "eu-west-3", "K": "a", "S": "b"})
    assert cfg.providers["b"].settings.region == "eu-west-3"
    assert BedrockProvider(cfg.providers["b"]).base == "https://bedrock-runtime.eu-west-3.amazonaws.com"


def test_config_yaml_example_parses() -> None:
    import yaml
    text = (Path(__file__).parent.parent / "config.yaml").read_text()
    block = text[text.index("  # bedrock:"):text.index("  local:")]
    lines = [ln.replace("  # ", "  ", 1) for ln in block.splitlines() if not ln.lstrip().startswith("# #")]
    raw = yaml.safe_load("providers:\n" + "\n".join(lines))
    cfg = parse({"providers": raw["providers"], "models": []}, env={})
    assert cfg.providers["bedrock"].settings.region == "us-east-1"


def test_request_mapping_rejections() -> None:
    p = provider()
    t = Target(provider="b", model=CLAUDE)
    link = {"model": "c", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    with pytest.raises(InvalidRequest) as e:
        p.to_wire(chat(link), t)
    assert e.value.status == 400 and e.value.param == "messages[0].content[0].image_url"
    with pytest.raises(InvalidRequest, match="one string"):
        p.to_wire(chat({"model": "e", "input": ["a", "b"]}, "embeddings"), t)
    strict = provider(unsupported_params="reject")
    with pytest.raises(InvalidRequest) as e:
        strict.to_wire(chat({"model": "c", "messages": MSG, "logprobs": True}), t)
    assert e.value.param == "logprobs"
    # tool_choice none drops tools, unless the history already holds tool blocks.
    none = p.to_wire(chat({"model": "c", "messages": MSG, "tools": [WEATHER], "tool_choice": "none"}), t)
    assert "toolConfig" not in orjson.loads(none.body or b"")


# -- end to end through the proxy with the openai SDK --------------------------------------------------

@pytest.fixture
async def fake_bedrock(aiohttp_server) -> FakeBedrock:
    fake = FakeBedrock()
    fake.server = await aiohttp_server(fake.app)
    return fake


def _config(fake: FakeBedrock, **extra: Any):
    prov = {"type": "bedrock", "region": REGION, "base_url": str(fake.server.make_url("")).rstrip("/"),
            "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY,
            "timeouts": {"first_byte": 2, "idle": 2, "total": 10}, **extra}
    return make_config(providers={"bedrock": prov},
                       models=[{"name": "claude", "targets": [{"provider": "bedrock", "model": CLAUDE}]},
                               {"name": "titan", "targets": [{"provider": "bedrock",
                                                              "model": "amazon.titan-embed-text-v2:0"}]}])


@pytest.fixture
async def client(start_proxy, fake_bedrock) -> openai.AsyncOpenAI:
    server = await start_proxy(_config(fake_bedrock))
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)


async def test_plain_completion(client, fake_bedrock) -> None:
    r = await client.chat.completions.create(model="claude", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], max_tokens=20, seed=1)
    assert r.choices[0].message.content == "Hello from Bedrock"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (12, 3)
    assert fake_bedrock.paths == ["/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"]
    assert fake_bedrock.requests[0]["system"] == [{"text": "be brief"}]
    assert fake_bedrock.requests[0]["inferenceConfig"] == {"maxTokens": 20}
    sent = fake_bedrock.headers[0]
    assert MASTER not in json.dumps(sent) and SECRET_KEY not in json.dumps(sent)
    raw = await client.chat.completions.with_raw_response.create(model="claude", messages=MSG, seed=1)
    assert raw.headers["x-llm-dropped-params"] == "seed"


async def test_streamed_text(client, fake_bedrock) -> None:
    fake_bedrock.blocks = [{"text": "one two three four five six seven"}]
    stream = await client.chat.completions.create(model="claude", messages=MSG, stream=True)
    text, finish, usage_seen = "", None, False
    async for c in stream:
        usage_seen = usage_seen or c.usage is not None
        if c.choices:
            text += c.choices[0].delta.content or ""
            finish = c.choices[0].finish_reason or finish
    assert text == "one two three four five six seven"
    assert finish == "stop" and not usage_seen
    assert fake_bedrock.paths[-1].endswith("/converse-stream")
    assert fake_bedrock.headers[-1]["Accept"] == "application/vnd.amazon.eventstream"


async def test_parallel_tool_calls(client, fake_bedrock) -> None:
    fake_bedrock.blocks, fake_bedrock.stop_reason = TOOL_BLOCKS, "tool_use"
    r = await client.chat.completions.create(model="claude", messages=MSG, tools=[WEATHER], tool_choice="auto")
    calls = r.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("tooluse_a", "get_weather", {"city": "Paris"}), ("tooluse_b", "get_weather", {"city": "Rome"})]
    assert r.choices[0].finish_reason == "tool_calls"
    assert fake_bedrock.requests[-1]["toolConfig"]["toolChoice"] == {"auto": {}}
    # Round trip: the answer goes back as history, with both results.
    history = [{"role": "user", "content": "weather?"}, r.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": "tooluse_a", "content": "18C"},
               {"role": "tool", "tool_call_id": "tooluse_b", "content": "24C"}]
    fake_bedrock.blocks, fake_bedrock.stop_reason = [{"text": "Warm."}], "end_turn"
    r2 = await client.chat.completions.create(model="claude", messages=history, tools=[WEATHER])
    assert r2.choices[0].message.content == "Warm."
    sent = fake_bedrock.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["toolResult"]["toolUseId"] for b in sent[2]["content"]] == ["tooluse_a", "tooluse_b"]


async def test_parallel_tool_calls_streamed(client, fake_bedrock) -> None:
    fake_bedrock.blocks, fake_bedrock.stop_reason = TOOL_BLOCKS, "tool_use"
    fake_bedrock.chunk_size = 3
    stream = await client.chat.completions.create(model="claude", messages=MSG, tools=[WEATHER], stream=True)
    calls: dict[int, dict[str, str]] = {}
    text, finish = "", None
    async for c in stream:
        d = c.choices[0].delta
        text += d.content or ""
        finish = c.choices[0].finish_reason or finish
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
            slot["id"] += tc.id or ""
            slot["name"] += (tc.function.name or "") if tc.function else ""
            slot["args"] += (tc.function.arguments or "") if tc.function else ""
    assert text == "Checking."
    assert finish == "tool_calls"
    assert calls == {0: {"id": "tooluse_a", "name": "get_weather", "args": '{"city":"Paris"}'},
                     1: {"id": "tooluse_b", "name": "get_weather", "args": '{"city":"Rome"}'}}


async def test_include_usage_chunk_with_cache_tokens(client, fake_bedrock) -> None:
    fake_bedrock.usage = {"inputTokens": 10, "outputTokens": 3, "totalTokens": 1513,
                          "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 500}
    stream = await client.chat.completions.create(model="claude", messages=MSG, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (1510, 3, 1513)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 1000
    assert last.usage.prompt_tokens_details.model_dump()["cache_write_tokens"] == 500
    assert all(c.usage is None for c in chunks[:-1])
    res = await client.chat.completions.create(model="claude", messages=MSG)
    assert res.usage is not None and res.usage.prompt_tokens_details is not None
    assert res.usage.prompt_tokens_details.model_dump()["cache_write_tokens"] == 500


@pytest.mark.parametrize(("status", "etype", "message", "exc", "want_status", "code"), [
    (429, "ThrottlingException", "Too many requests", openai.RateLimitError, 429, "rate_limit_exceeded"),
    (400, "ValidationException", "Input is too long for requested model.", openai.BadRequestError, 400,
     "context_length_exceeded"),
    (403, "AccessDeniedException", "refused the gateway's credentials", openai.InternalServerError, 502,
     "provider_auth_failed"),
    (404, "ResourceNotFoundException", "Model not found", openai.NotFoundError, 404, "model_not_found"),
    (503, "ServiceUnavailableException", "Unavailable", openai.InternalServerError, 503, None),
    (408, "ModelTimeoutException", "Model timed out", openai.InternalServerError, 504, "upstream_timeout"),
])
async def test_errors_become_sdk_exceptions(client, fake_bedrock, status, etype, message, exc, want_status,
                                            code) -> None:
    fake_bedrock.error = (status, etype, message)
    with pytest.raises(exc) as info:
        await client.chat.completions.create(model="claude", messages=MSG)
    assert info.value.status_code == want_status
    assert message in info.value.message
    if code:
        assert info.value.code == code


async def test_wrong_secret_is_a_gateway_fault_not_the_clients(start_proxy, fake_bedrock) -> None:
    server = await start_proxy(_config(fake_bedrock, aws_secret_access_key="not-the-secret"))
    c = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await c.chat.completions.create(model="claude", messages=MSG)
    assert info.value.status_code == 502
    assert "not-the-secret" not in str(info.value.body)


async def test_throttling_mid_stream_ends_with_sse_error(client, fake_bedrock) -> None:
    fake_bedrock.blocks = [{"text": "partial answer here"}]
    fake_bedrock.fail_midstream = "throttlingException"
    stream = await client.chat.completions.create(model="claude", messages=MSG, stream=True)
    got = ""
    with pytest.raises(openai.APIError) as info:
        async for c in stream:
            got += c.choices[0].delta.content or ""
    assert got == "partial"
    assert "Too many tokens" in info.value.message
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "rate_limit_exceeded"


async def test_embeddings_and_https_image_rejection(client, fake_bedrock) -> None:
    # The SDK asks for base64 by default and decodes it: this checks our little-endian float32 encoding.
    e = await client.embeddings.create(model="titan", input="hello big world")
    assert e.data[0].embedding == [0.25, -0.5, 1.0]
    assert e.usage.prompt_tokens == 3
    assert fake_bedrock.paths[-1] == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert fake_bedrock.requests[-1] == {"inputText": "hello big world"}
    floats = await client.embeddings.create(model="titan", input=["x"], encoding_format="float")
    assert floats.data[0].embedding == [0.25, -0.5, 1.0]
    assert fake_bedrock.requests[-1] == {"inputText": "x"}
    with pytest.raises(openai.BadRequestError) as info:
        await client.embeddings.create(model="titan", input=["a", "b"])
    assert info.value.param == "input"
    n = len(fake_bedrock.requests)
    with pytest.raises(openai.BadRequestError) as info2:
        await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "data:image" in info2.value.message
    assert len(fake_bedrock.requests) == n                    # rejected before any upstream call
