"""Provider secrets never leave: an upstream that echoes our key in its errors (as vLLM does) is redacted
before the client, the ledger (/v1/usage), the logs or a span sees it."""

from __future__ import annotations

import logging

import aiohttp
import orjson
import pytest

from proxy.config import parse
from proxy.gateway import GATEWAY
from proxy.redact import MASK, Redactor, redact
from tests.conftest import MASTER, make_config
from tests.fakes.hostile_upstream import HostileUpstream
from tests.fakes.otlp_receiver import OTLPReceiver
from tests.keys_helpers import create_key

CANARY = "canary-provider-key-Zq81xLm0Pw"        # no well-known key shape: only the configured list finds it
SERVER_SECRET = "server-hmac-secret-4471"
AWS_SECRET = "aws/Secret+Access/Key0123456789abcdefXYZ"


@pytest.fixture
async def hostile(aiohttp_server) -> HostileUpstream:
    fake = HostileUpstream()
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
async def receiver(aiohttp_server) -> OTLPReceiver:
    r = OTLPReceiver()
    r.server = await aiohttp_server(r.app)
    return r


def _config(hostile: HostileUpstream, receiver: OTLPReceiver, tmp_path):
    return make_config(
        server={"secret": SERVER_SECRET},
        storage={"database": f"sqlite:///{tmp_path}/l.db"},
        providers={"up": {"type": "openai", "base_url": str(hostile.server.make_url("/v1")), "api_key": CANARY}},
        models=[{"name": "m", "targets": [{"provider": "up", "model": "m"}]}],
        routing={"retries": 0},
        telemetry={"tracing": {"endpoint": str(receiver.server.make_url("/")).rstrip("/")}})


async def _post(url: str, key: str, body: dict) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
            return r.status, await r.read()


async def test_a_provider_key_echoed_by_the_upstream_reaches_no_client_ledger_log_or_span(
        start_proxy, hostile, receiver, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = await start_proxy(_config(hostile, receiver, tmp_path))
    url = str(server.make_url("")).rstrip("/")
    vkey = (await create_key(server, name="client"))["key"]
    bodies: list[bytes] = []
    msg = [{"role": "user", "content": "hi"}]
    for status in (400, 401, 500):                       # relayed, our-credentials (502) and server errors
        hostile.mode, hostile.status = "echo_key", status
        st, body = await _post(url, vkey, {"model": "m", "messages": msg})
        assert st >= 400, body
        bodies.append(body)
    hostile.mode = "echo_key_stream"                     # an in-band error event, then the stream breaks
    st, body = await _post(url, vkey, {"model": "m", "messages": msg, "stream": True})
    assert st == 200
    bodies.append(body)
    assert hostile.attempts == 4
    first = orjson.loads(bodies[0])["error"]
    assert first["code"] == "bad_key" and MASK in first["message"]     # the provider's message, redacted
    assert b"key *** was revoked" in bodies[3]
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/v1/usage?limit=100", headers={"Authorization": f"Bearer {MASTER}"}) as r:
            usage = await r.read()
    events = orjson.loads(usage)["data"]
    assert len(events) == 4 and all(e["error"] for e in events)
    assert await server.app[GATEWAY].telemetry.tracing.flush(), "span export did not finish"
    spans = repr([(s.name, s.attributes, s.status_code) for s in receiver.spans])
    assert receiver.spans
    logged = repr([(r.getMessage(), r.__dict__) for r in caplog.records])
    for where, text in (("response", b"".join(bodies)), ("usage", usage), ("spans", spans.encode()),
                        ("logs", logged.encode())):
        assert CANARY.encode() not in text, f"the provider key leaked into the {where}"


def test_every_configured_secret_and_key_shape_is_redacted():
    cfg = parse({"server": {"master_key": MASTER, "secret": SERVER_SECRET},
                 "providers": {"b": {"type": "bedrock", "region": "us-east-1", "aws_access_key_id": "AKIAABCDEFGHIJKLMNOP",
                                     "aws_secret_access_key": AWS_SECRET},
                               "o": {"type": "openai", "base_url": "http://x/v1", "api_key": CANARY,
                                     "headers": {"x-extra-auth": "Token extra-header-secret"}}},
                 "models": [{"name": "m", "targets": [{"provider": "o", "model": "m"}]}]}, env={})
    r = Redactor.from_config(cfg)
    text = (f"{CANARY} {SERVER_SECRET} {MASTER} {AWS_SECRET} AKIAABCDEFGHIJKLMNOP extra-header-secret "
            f"https://generativelanguage.googleapis.com/v1/models?alt=sse&key=someGoogleKey123 sk-proj-abcdef123456")
    out = r.text(text)
    for secret in (CANARY, SERVER_SECRET, MASTER, AWS_SECRET, "AKIAABCDEFGHIJKLMNOP", "extra-header-secret",
                   "someGoogleKey123", "sk-proj-abcdef123456"):
        assert secret not in out, (secret, out)
    assert "alt=sse&key=***" in out
    assert r.text("model 'gpt-4o' does not exist") == "model 'gpt-4o' does not exist"    # ordinary text kept
    assert redact("see ?key=abc123&x=1") == "see ?key=***&x=1"
