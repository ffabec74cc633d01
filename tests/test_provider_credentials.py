"""The gateway's own provider credentials: refused (401/403) or never set. Both are configuration faults:
502 with a code naming the provider, never the key; not retried on that target, not counted by its breaker;
another target may still answer."""

from __future__ import annotations

import openai
import orjson
import pytest

from tests.conftest import MASTER, make_config, openai_provider
from tests.cost_helpers import request

MSG = [{"role": "user", "content": "Hi"}]


def _config(fake, tmp_path, **up):
    # max_concurrency 1: a call that kept its slot would make the next one a 429
    return make_config(
        providers={"up": {**openai_provider(fake), **up}, "local": {"type": "mock"}},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]},
                {"name": "both", "targets": [{"provider": "up", "model": "gpt-4o-mini"},
                                             {"provider": "local", "model": "mock"}]}],
        routing={"retries": 3, "backoff_base": 0.001, "breaker": {"failures": 1, "cooldown": 30}},
        limits={"global": {"max_concurrency": 1}}, storage={"database": f"sqlite:///{tmp_path}/l.db"})


async def _statuses(server) -> list[int]:
    """Each call's one usage event, oldest first."""
    st, body, _ = await request(str(server.make_url("")), "GET", "/v1/usage")
    assert st == 200, body
    return [ev["status"] for ev in reversed(body["data"])]


def _client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)


@pytest.mark.parametrize("mode", ["error401", "error403"])
async def test_refused_credentials_are_502_provider_auth_failed(start_proxy, fake_openai, mode, tmp_path):
    fake_openai.mode = mode
    server = await start_proxy(_config(fake_openai, tmp_path))
    client = _client(server)
    for sent in (1, 2):      # the breaker (failures: 1) would skip the target on the second call if it counted
        with pytest.raises(openai.InternalServerError) as e:
            await client.chat.completions.create(model="gpt", messages=MSG)
        assert e.value.status_code == 502 and e.value.code == "provider_auth_failed"
        assert "provider 'up'" in e.value.message and "providers.up.api_key" in e.value.message
        assert "sk-upstr" not in orjson.dumps(e.value.body).decode()     # not even the provider's masked echo
        assert len(fake_openai.requests) == sent                          # retries: 3, yet one try
    raw = await client.chat.completions.with_raw_response.create(model="both", messages=MSG)
    assert raw.headers["x-llm-provider"] == "local" and raw.parse().choices[0].message.content
    assert len(fake_openai.requests) == 3
    assert await _statuses(server) == [502, 502, 200]


async def test_unset_key_variable_is_502_provider_key_missing_and_nothing_is_sent(start_proxy, fake_openai,
                                                                                   tmp_path):
    server = await start_proxy(_config(fake_openai, tmp_path, api_key="${LLM_TEST_UNSET_KEY:-}"))
    client = _client(server)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as e:
            await client.chat.completions.create(model="gpt", messages=MSG, stream=stream)
        assert e.value.status_code == 502 and e.value.code == "provider_key_missing"
        assert "provider 'up'" in e.value.message and "LLM_TEST_UNSET_KEY" in e.value.message
    raw = await client.chat.completions.with_raw_response.create(model="both", messages=MSG)
    assert raw.headers["x-llm-provider"] == "local"
    assert fake_openai.requests == []
    assert await _statuses(server) == [502, 502, 200]
