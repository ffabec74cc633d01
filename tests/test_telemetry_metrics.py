"""GET /metrics: parsed with prometheus_client's own text parser; protection by network and key."""

from __future__ import annotations

import aiohttp
import openai
from prometheus_client.parser import text_string_to_metric_families

from proxy.context import ChatCall
from proxy.gateway import GATEWAY
from proxy.telemetry.metrics import Metrics
from tests.conftest import MASTER, make_config, openai_provider

AUTH = {"Authorization": f"Bearer {MASTER}"}


async def scrape(server, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(server.make_url("/metrics"), headers=headers or {}) as r:
        return r.status, await r.text()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out: dict[tuple[str, frozenset], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


async def test_request_token_latency_and_error_metrics(start_proxy, fake_openai):
    cfg = make_config(
        providers={"local": {"type": "mock"}, "up": openai_provider(fake_openai),
                   "dead": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "timeouts": {"connect": 1}}},
        models=[{"name": "mock", "targets": [{"provider": "local", "model": "mock"}]},
                {"name": "fb", "targets": [{"provider": "dead", "model": "m"}, {"provider": "up", "model": "m"}]}],
        routing={"retries": 0})
    server = await start_proxy(cfg)
    c = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    r = await c.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi there"}])
    stream = await c.chat.completions.create(model="mock", stream=True, stream_options={"include_usage": True},
                                             messages=[{"role": "user", "content": "hi there"}])
    async for _ in stream:
        pass
    await c.chat.completions.create(model="fb", messages=[{"role": "user", "content": "x"}])
    bad = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-nope-123456", max_retries=0)
    for call in (bad.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}]),
                 c.chat.completions.create(model="no-such-model-xyz", messages=[{"role": "user", "content": "x"}])):
        try:
            await call
        except openai.APIStatusError:
            pass
    status, text = await scrape(server)
    assert status == 200
    assert value(text, "llm_requests_total", model="mock", provider="local", status="200") == 2
    assert value(text, "llm_request_duration_seconds_count", model="mock", provider="local", status="200") == 2
    assert value(text, "llm_time_to_first_token_seconds_count", model="mock", provider="local") == 1
    assert value(text, "llm_tokens_total", model="mock", provider="local", type="output") == \
        2 * r.usage.completion_tokens
    assert value(text, "llm_tokens_total", model="mock", provider="local", type="input") == 2 * r.usage.prompt_tokens
    assert value(text, "llm_requests_total", model="mock", provider="none", status="401") == 1
    assert value(text, "llm_request_errors_total", status="401", code="invalid_api_key") == 1
    # A model name the client made up is not a label value (cardinality stays bounded).
    assert value(text, "llm_requests_total", model="other", provider="none", status="404") == 1
    assert "no-such-model-xyz" not in text
    assert value(text, "llm_upstream_attempts_total", provider="dead", outcome="upstream_error") == 1
    assert value(text, "llm_upstream_attempts_total", provider="up", outcome="ok") == 1
    assert value(text, "llm_target_errors_total", provider="dead", model="m") == 1
    assert value(text, "llm_target_breaker_state", provider="up", model="m") == 0
    assert value(text, "llm_inflight_streams") == 0
    assert value(text, "llm_inflight_requests") == 0
    assert (value(text, "process_resident_memory_bytes") or 0) > 1_000_000
    assert MASTER not in text


async def test_metrics_protection(start_proxy):
    cfg = make_config(telemetry={"metrics": {"allow_from": [], "key": "scrape-key-42"}})
    server = await start_proxy(cfg)
    assert (await scrape(server))[0] == 401
    assert (await scrape(server, {"Authorization": "Bearer wrong"}))[0] == 401
    assert (await scrape(server, {"Authorization": "Bearer scrape-key-42"}))[0] == 200
    status, text = await scrape(server, AUTH)
    assert status == 200 and "llm_requests" in text
    # Open on localhost by default: the test server listens on 127.0.0.1.
    open_server = await start_proxy(make_config())
    assert (await scrape(open_server))[0] == 200
    off = await start_proxy(make_config(telemetry={"metrics": {"enabled": False}}))
    assert (await scrape(off))[0] == 404


async def test_openmetrics_by_accept_header(start_proxy):
    server = await start_proxy(make_config())
    async with aiohttp.ClientSession() as s, s.get(
            server.make_url("/metrics"), headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await r.text()).rstrip().endswith("# EOF")


def test_rejections_cost_cache_and_budget_gauges():
    m = Metrics(["gpt"])
    call = ChatCall(body={}, model="gpt", stream=False)
    call.status, call.error, call.error_code = 429, "slow down", "rate_limit_exceeded"
    m.finished(call, 0.01)
    call = ChatCall(body={}, model="gpt", stream=False)
    call.status, call.error, call.error_code = 429, "budget", "insufficient_quota"
    m.finished(call, 0.01)
    call = ChatCall(body={}, model="gpt", stream=False)
    call.status, call.cost_nanos, call.cache = 200, 2_500_000, "hit"
    m.finished(call, 0.01)
    m.set_budget_utilisation("team-a", 0.75)
    text = m.render().decode()
    assert value(text, "llm_rejections_total", reason="rate_limit") == 1
    assert value(text, "llm_rejections_total", reason="budget") == 1
    assert value(text, "llm_cost_usd_total", model="gpt", provider="none") == 0.0025
    assert value(text, "llm_cache_requests_total", result="hit") == 1
    assert value(text, "llm_budget_utilization_ratio", budget="team-a") == 0.75


async def test_each_app_has_its_own_registry(start_proxy):
    a = await start_proxy(make_config())
    b = await start_proxy(make_config())
    assert a.app[GATEWAY].telemetry.metrics.registry is not b.app[GATEWAY].telemetry.metrics.registry


async def test_streamed_cost_reaches_the_cost_counter(start_proxy):
    """A stream is priced after its last byte (no x-llm-cost header); the counter still gets it."""
    from tests.cost_helpers import PER_CALL_NANOS, chat_body, priced_config

    server = await start_proxy(priced_config("sqlite://:memory:"))
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    body = chat_body()
    stream = await client.chat.completions.create(model=body["model"], messages=body["messages"],
                                                  max_tokens=body["max_tokens"], stream=True)
    assert [c async for c in stream]
    plain = await client.chat.completions.create(model=body["model"], messages=body["messages"],
                                                 max_tokens=body["max_tokens"])
    assert plain.choices[0].message.content
    await client.close()
    _, text = await scrape(server)
    got = value(text, "llm_cost_usd_total", model="mock", provider="local")
    assert got is not None and abs(got - 2 * PER_CALL_NANOS / 1e9) < 1e-12
