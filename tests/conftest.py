"""Shared fixtures: config builder, fake upstreams, and a proxy started on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.app import build_app
from proxy.config import Config, parse
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI

MASTER = "sk-test-master-0123456789"


def make_config(providers: dict[str, Any] | None = None, models: list[dict[str, Any]] | None = None,
                **sections: Any) -> Config:
    server = {"master_key": MASTER, **sections.pop("server", {})}
    storage = {"database": "sqlite://:memory:", **sections.pop("storage", {})}   # hermetic ledger per app
    raw = {"server": server, "storage": storage, "providers": providers or {"local": {"type": "mock"}},
           "models": models or [{"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}], **sections}
    return parse(raw, env={})


def require_service(name: str, reason: str) -> None:
    """Skip with a reason on a machine without the service; fail where CI demands services."""
    if os.environ.get("REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required (REQUIRE_SERVICES=1) but unavailable: {reason}")
    pytest.skip(f"{name} unavailable: {reason}")


StartProxy = Callable[[Config], Awaitable[TestServer]]


@pytest.fixture
def start_proxy(aiohttp_server) -> StartProxy:
    async def go(config: Config) -> TestServer:
        return await aiohttp_server(build_app(config))
    return go


@pytest.fixture
async def fake_openai(aiohttp_server) -> FakeOpenAI:
    fake = FakeOpenAI()
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
async def fake_anthropic(aiohttp_server) -> FakeAnthropic:
    fake = FakeAnthropic()
    fake.server = await aiohttp_server(fake.app)  # type: ignore[attr-defined]
    return fake


def openai_provider(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": str(fake.server.make_url("/v1")), "api_key": "sk-upstream-secret",
            **extra}


@pytest.fixture
async def proxy_to_fake(start_proxy, fake_openai) -> TestServer:
    """A proxy whose model `gpt` goes to the fake OpenAI upstream and `mock` to the built-in mock."""
    cfg = make_config(
        providers={"up": openai_provider(fake_openai, timeouts={"first_byte": 1, "idle": 1, "total": 10}),
                   "local": {"type": "mock"}},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]},
                {"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}],
    )
    return await start_proxy(cfg)
