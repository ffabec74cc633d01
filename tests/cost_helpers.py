"""Shared by the cost/budget tests: a priced mock model, HTTP helpers, ledger row counts."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from tests.conftest import MASTER, make_config

ADMIN = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "count my tokens please"}]
PER_CALL_NANOS = 16_000          # 16 completion tokens x $1 per million; input priced at 0


def priced_config(database: str, **sections: Any):
    """`mock` answers 16 tokens; input free, output $1/M: each call with max_tokens 16 costs exactly $0.000016."""
    storage = {"database": database, **sections.pop("storage", {})}
    return make_config(
        providers={"local": {"type": "mock", "reply_tokens": 16}},
        models=[{"name": "mock", "targets": [{"provider": "local", "model": "mock"}],
                 "price": {"input": 0, "output": 1.0}}],
        storage=storage, **sections)


async def request(url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                  session: aiohttp.ClientSession | None = None) -> tuple[int, Any, dict[str, str]]:
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        data = orjson.dumps(body) if body is not None else None
        async with s.request(method, url + path, data=data, headers=ADMIN if headers is None else headers) as r:
            raw = await r.read()
            try:
                parsed = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                parsed = raw
            return r.status, parsed, dict(r.headers)
    finally:
        if own:
            await s.close()


def chat_body(budget: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "mock", "messages": MSG, "max_tokens": 16, **extra}
    if budget:
        body["metadata"] = {"budget_id": budget}
    return body
