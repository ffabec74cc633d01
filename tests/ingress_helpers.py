"""Shared by the ingress tests (messages, responses): a proxy with a chat-only fake OpenAI upstream, a fake
Anthropic upstream and the mock, a file ledger, usage events, and a raw-socket client that hangs up."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from tests.conftest import MASTER, make_config, openai_provider

ADMIN = {"Authorization": f"Bearer {MASTER}"}
TIMEOUTS = {"first_byte": 2, "idle": 2, "total": 10}


def ingress_config(fake_openai, fake_anthropic, tmp_path, **sections: Any):
    """`gpt` -> the fake OpenAI, chat completions only; `gpt-r` -> the same fake, as a provider whose upstream
    serves /v1/responses; `mixed` -> chat-only first, then the Responses one; `claude` -> the fake Anthropic; `mock` -> the mock (slow streams with
    `mock_delay_ms`)."""
    delay = sections.pop("mock_delay_ms", 0)
    database = sections.pop("database", f"sqlite:///{tmp_path}/l.db")
    return make_config(
        providers={"up": openai_provider(fake_openai, timeouts=TIMEOUTS, **sections.pop("openai", {})),
                   "resp": openai_provider(fake_openai, timeouts=TIMEOUTS, responses=True),
                   "ant": {"type": "anthropic", "base_url": str(fake_anthropic.server.make_url("")),
                           "api_key": fake_anthropic.api_key, "timeouts": TIMEOUTS},
                   "local": {"type": "mock", "token_delay_ms": delay, "reply_tokens": 16}},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]},
                {"name": "gpt-r", "targets": [{"provider": "resp", "model": "gpt-4o-mini"}]},
                {"name": "mixed", "targets": [{"provider": "up", "model": "gpt-4o-mini"},
                                              {"provider": "resp", "model": "gpt-4o-mini"}]},
                {"name": "claude", "targets": [{"provider": "ant", "model": "claude-haiku-4-5"}]},
                {"name": "mock", "targets": [{"provider": "local", "model": "mock"}]}],
        storage={"database": database}, **sections)


async def usage_events(server, want: int = 1, tries: int = 60) -> list[dict[str, Any]]:
    """The ledger's usage events, waiting (briefly) until at least `want` are written."""
    evs: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(tries):
            async with s.get(server.make_url("/v1/usage"), headers=ADMIN) as r:
                evs = (await r.json())["data"]
            if len(evs) >= want:
                return evs
            await asyncio.sleep(0.05)
    return evs


async def hang_up_after(server, path: str, body: dict[str, Any], marker: bytes,
                        headers: dict[str, str] | None = None) -> bytes:
    """POST over a raw socket, read until `marker` shows up, then close the connection at once."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    data = orjson.dumps(body)
    head = [f"POST {path} HTTP/1.1", f"Host: {server.host}:{server.port}", "Content-Type: application/json",
            f"Content-Length: {len(data)}", f"Authorization: Bearer {MASTER}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    await writer.drain()
    got = b""
    while marker not in got:
        part = await asyncio.wait_for(reader.read(4096), 5)
        assert part, got
        got += part
    writer.transport.abort()
    return got
