"""Tenant isolation and invalidation: keys of different tenants never share entries; DELETE /admin/cache."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from proxy.gateway import GATEWAY
from proxy.pipeline.auth import Principal
from tests.cache_helpers import AUTH, cache_config, drop_prefix, new_prefix, post, redis_or_skip

MSG = [{"role": "user", "content": "tenant question"}]
KEYS = {
    "sk-team-a-1": Principal(id="k1", source_id="team-a"),
    "sk-team-a-2": Principal(id="k2", source_id="team-a"),
    "sk-team-b-1": Principal(id="k3", source_id="team-b"),
    "sk-loner": Principal(id="k4"),
    "sk-no-gpt": Principal(id="k5", source_id="team-a", models=("gpt-b",)),
    "sk-no-mini": Principal(id="k6", source_id="team-a", models=("gpt",)),
}


class Lookup:
    async def find(self, credential: str) -> Principal | None:
        return KEYS.get(credential)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["memory", "redis"])
async def tenants(request, start_proxy, fake_openai):
    backend, prefix, client = request.param, new_prefix(), None
    if backend == "redis":
        client = await redis_or_skip()

    async def start(**cache):
        server = await start_proxy(cache_config(fake_openai, backend, prefix, mode="all", **cache))
        server.app[GATEWAY].auth.lookup = Lookup()
        return server
    yield start
    if client is not None:
        await drop_prefix(client, prefix)
        await client.aclose()


async def status_of(server, key: str, body: dict | None = None) -> str:
    status, headers, raw = await post(server, body or {"model": "gpt", "messages": MSG}, bearer(key))
    assert status == 200, raw
    return headers["x-llm-cache"]


async def test_tenants_never_see_each_others_entries(tenants, fake_openai):
    server = await tenants()
    assert await status_of(server, "sk-team-a-1") == "MISS"
    assert await status_of(server, "sk-team-a-2") == "HIT"          # same source_id: one tenant
    assert await status_of(server, "sk-team-b-1") == "MISS"
    assert await status_of(server, "sk-loner") == "MISS"            # no source_id: its own key id
    assert await status_of(server, "sk-team-b-1") == "HIT"
    assert len(fake_openai.requests) == 3
    # a client cannot pick another tenant through the body's metadata
    spoof = {"model": "gpt", "messages": MSG, "metadata": {"source_id": "team-a"}}
    assert await status_of(server, "sk-loner", spoof) == "HIT"      # its own entry, not team-a's
    assert len(fake_openai.requests) == 3


async def test_shared_namespace_shares_entries(tenants, fake_openai):
    server = await tenants(namespace="shared")
    assert await status_of(server, "sk-team-a-1") == "MISS"
    assert await status_of(server, "sk-team-b-1") == "HIT"


async def test_hit_never_bypasses_the_public_models_a_key_may_use(tenants, fake_openai):
    server = await tenants()
    assert await status_of(server, "sk-team-a-1") == "MISS"
    status, _, raw = await post(server, {"model": "gpt", "messages": MSG}, bearer("sk-no-gpt"))
    assert status == 403, raw
    assert len(fake_openai.requests) == 1
    # keys are scoped by public names: a key listing `gpt` gets its answers, whatever upstream made them
    assert await status_of(server, "sk-no-mini") == "HIT"
    assert len(fake_openai.requests) == 1


async def test_an_alias_shares_the_entries_of_its_model(tenants, fake_openai):
    server = await tenants()
    assert await status_of(server, "sk-team-a-1") == "MISS"
    assert await status_of(server, "sk-team-a-1", {"model": "gpt-alias", "messages": MSG}) == "HIT"
    status, out = await admin_delete(server, model="gpt-alias")
    assert (status, out["deleted"]) == (200, 1)
    assert await status_of(server, "sk-team-a-1") == "MISS"


async def admin_delete(server, auth_key: str = "", query: str = "", **body) -> tuple[int, dict]:
    headers = bearer(auth_key) if auth_key else AUTH
    async with aiohttp.ClientSession() as s:
        async with s.delete(server.make_url("/admin/cache" + query), headers=headers,
                            data=orjson.dumps(body) if body else None) as r:
            return r.status, await r.json()


async def test_invalidate_by_key_model_namespace_and_all(tenants, fake_openai):
    server = await tenants()
    q = {"model": "gpt", "messages": MSG}
    qb = {"model": "gpt-b", "messages": MSG}

    async def prime() -> None:
        for k, body in (("sk-team-a-1", q), ("sk-team-a-1", qb), ("sk-team-b-1", q), ("sk-loner", qb)):
            await status_of(server, k, body)

    await prime()
    _, h, _ = await post(server, q, bearer("sk-team-a-1"))
    assert h["x-llm-cache"] == "HIT"
    assert await admin_delete(server, key=h["x-llm-cache-key"]) == (200, {"deleted": 1,
                                                                          "selector": {"key": h["x-llm-cache-key"]}})
    assert await status_of(server, "sk-team-a-1", q) == "MISS"
    assert await status_of(server, "sk-team-a-1", qb) == "HIT"

    status, out = await admin_delete(server, model="gpt-b")
    assert (status, out["deleted"]) == (200, 2)
    assert await status_of(server, "sk-loner", qb) == "MISS"
    assert await status_of(server, "sk-team-b-1", q) == "HIT"       # other model untouched

    status, out = await admin_delete(server, query="?source_id=team-b")
    assert (status, out["deleted"]) == (200, 1)
    assert await status_of(server, "sk-team-b-1", q) == "MISS"
    assert await status_of(server, "sk-team-a-1", q) == "HIT"       # other tenant untouched

    status, out = await admin_delete(server, all=True)
    assert (status, out["deleted"]) == (200, 3)
    assert await status_of(server, "sk-team-a-1", q) == "MISS"
    assert await status_of(server, "sk-loner", qb) == "MISS"


async def test_admin_cache_is_master_only_and_validated(tenants, fake_openai):
    server = await tenants()
    status, out = await admin_delete(server, auth_key="sk-team-a-1", all=True)
    assert status == 403 and out["error"]["code"] == "permission_denied"
    status, _ = await admin_delete(server, auth_key="sk-wrong", all=True)
    assert status == 401
    assert (await admin_delete(server))[0] == 400                          # no selector
    assert (await admin_delete(server, model="gpt", namespace="x"))[0] == 400
    assert (await admin_delete(server, bogus=1))[0] == 400
    await status_of(server, "sk-team-a-1")
    await status_of(server, "sk-team-a-1")
    async with aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/admin/cache"), headers=AUTH) as r:
            rows = (await r.json())["data"]
    assert rows == [{"model": "gpt", "namespace": "src:team-a", "hit": 1, "miss": 1, "bypass": 0, "store": 1,
                     "error": 0, "hit_rate": 0.5}]
