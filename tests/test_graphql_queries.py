"""GraphQL queries over HTTP against a live proxy: each query, a virtual key's view, admin-only fields."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import orjson

from tests.conftest import make_config
from tests.graphql_helpers import ADMIN, CHAT, chat_input, codes, gql

ROOT = str(Path(__file__).resolve().parent.parent)


def _config(**sections):
    return make_config(
        providers={"local": {"type": "mock", "reply_tokens": 8}},
        models=[{"name": "mock", "aliases": ["mock-latest"], "targets": [{"provider": "local", "model": "mock"}],
                 "price": {"input": 1.0, "output": 1.0}},
                {"name": "other", "targets": [{"provider": "local", "model": "mock"}]}],
        **sections)


async def _key(url: str, **fields) -> tuple[str, str]:
    status, doc = await gql(url, """mutation($i: KeyInput!) { createKey(input: $i) { secret key { id name } } }""",
                            {"i": {"name": "team-a", **fields}})
    assert status == 200 and "errors" not in doc, doc
    return doc["data"]["createKey"]["key"]["id"], doc["data"]["createKey"]["secret"]


async def _budget(url: str, bid: str, amount: float = 1.0, scope: str = "global") -> None:
    async with aiohttp.ClientSession() as s, s.post(url + "/admin/budgets", headers=ADMIN, data=orjson.dumps(
            {"id": bid, "amount_usd": amount, "scope": scope})) as r:
        assert r.status == 200, await r.text()


LAZY = """
import asyncio, sys
from aiohttp.test_utils import TestClient, TestServer
from proxy.app import build_app
from tests.conftest import MASTER, make_config

async def main():
    app = build_app(make_config())
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/health")).status == 200
        assert "strawberry" not in sys.modules, "a default start imported strawberry"
        r = await client.post("/graphql", json={"query": "{ me { id } }"},
                              headers={"Authorization": "Bearer " + MASTER})
        assert (await r.json())["data"]["me"]["id"] == "master"
        assert "strawberry" in sys.modules
    print("ok")

asyncio.run(main())
"""


async def test_default_start_does_not_import_strawberry():
    """In a fresh interpreter: building and serving the app loads strawberry only at /graphql's first use."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", LAZY, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and out.strip() == b"ok", err.decode()[-2000:]


async def test_disabled_has_no_route(start_proxy):
    srv = await start_proxy(_config(graphql={"enabled": False}))
    status, doc = await gql(str(srv.make_url("")), "{ me { id } }")
    assert status == 404 and doc["error"]["code"] == "not_found"


async def test_models_me_and_get(start_proxy):
    url = str((await start_proxy(_config())).make_url(""))
    status, doc = await gql(url, "{ models { id ownedBy aliases versions } }", method="GET")
    assert status == 200
    assert doc["data"]["models"] == [{"id": "mock", "ownedBy": "llm-service", "aliases": ["mock-latest"], "versions": []},
                                     {"id": "other", "ownedBy": "llm-service", "aliases": [], "versions": []}]
    kid, secret = await _key(url, models=["mock"], rpm=5, tpm=1000, sourceId="app-1", sourceType="application")
    _, doc = await gql(url, "{ models { id } me { id name sourceId isMaster limits { rpm tpm maxConcurrency } } }",
                       headers={"x-api-key": secret})                     # the Anthropic SDK's header works too
    assert doc["data"]["models"] == [{"id": "mock"}]
    assert doc["data"]["me"] == {"id": kid, "name": "team-a", "sourceId": "app-1", "isMaster": False,
                                 "limits": {"rpm": 5, "tpm": 1000, "maxConcurrency": None}}


async def test_missing_and_bad_key_are_unauthenticated(start_proxy):
    url = str((await start_proxy(_config())).make_url(""))
    status, doc = await gql(url, "{ me { id } }", headers={})
    assert status == 200 and codes(doc) == ["UNAUTHENTICATED"] and doc["data"] is None
    _, doc = await gql(url, "{ models { id } }", headers={"Authorization": "Bearer sk-llm-nope"})
    assert codes(doc) == ["UNAUTHENTICATED"]
    assert "sk-llm-nope" not in orjson.dumps(doc).decode()


async def test_usage_paging_summary_and_own_rows_only(start_proxy):
    url = str((await start_proxy(_config())).make_url(""))
    kid_a, a = await _key(url)
    kid_b, b = await _key(url)
    for secret in (a, a, b):
        _, doc = await gql(url, CHAT, {"input": chat_input()}, headers={"Authorization": f"Bearer {secret}"})
        assert "errors" not in doc, doc
    q = """query($f: UsageFilter, $after: String) { usage(filter: $f, first: 1, after: $after) {
             nodes { id requestId keyId model status usage { promptTokens completionTokens } costUsd }
             pageInfo { hasNextPage endCursor } } }"""
    _, doc = await gql(url, q, {"f": {"keyId": kid_a}})
    page = doc["data"]["usage"]
    assert page["pageInfo"]["hasNextPage"] is True and page["nodes"][0]["keyId"] == kid_a
    _, doc = await gql(url, q, {"f": {"keyId": kid_a}, "after": page["pageInfo"]["endCursor"]})
    assert doc["data"]["usage"]["pageInfo"]["hasNextPage"] is False
    assert doc["data"]["usage"]["nodes"][0]["id"] != page["nodes"][0]["id"]
    # a virtual key asking for another key's usage still gets only its own
    _, doc = await gql(url, "query($f: UsageFilter) { usage(filter: $f) { nodes { keyId } } }",
                       {"f": {"keyId": kid_a}}, headers={"Authorization": f"Bearer {b}"})
    assert [n["keyId"] for n in doc["data"]["usage"]["nodes"]] == [kid_b]
    sq = "query($g: UsageGroupBy!) { usageSummary(groupBy: $g) { key requests errors cacheHits promptTokens completionTokens costUsd } }"
    _, doc = await gql(url, sq, {"g": "KEY"})
    by_key = {g["key"]: g for g in doc["data"]["usageSummary"]}
    assert by_key[kid_a]["requests"] == 2 and by_key[kid_b]["requests"] == 1 and by_key[kid_a]["costUsd"] > 0
    _, doc = await gql(url, sq, {"g": "KEY"}, headers={"Authorization": f"Bearer {b}"})
    assert [g["key"] for g in doc["data"]["usageSummary"]] == [kid_b]
    # the same figures as REST's /v1/usage/summary (the same store function)
    async with aiohttp.ClientSession() as s, s.get(url + "/v1/usage/summary?group_by=model", headers=ADMIN) as r:
        rest = (await r.json())["data"]
    _, doc = await gql(url, sq, {"g": "MODEL"})
    assert [(g["key"], g["requests"], g["completionTokens"]) for g in doc["data"]["usageSummary"]] == \
        [(d["model"], d["requests"], d["completion_tokens"]) for d in rest]


async def test_budgets_keys_and_cycle(start_proxy):
    url = str((await start_proxy(_config())).make_url(""))
    await _budget(url, "team-budget", 2.0)
    await _budget(url, "other-budget", 3.0)
    kid, secret = await _key(url, budgetId="team-budget")
    await _key(url)
    _, doc = await gql(url, CHAT, {"input": chat_input()}, headers={"Authorization": f"Bearer {secret}"})
    assert "errors" not in doc, doc
    q = "{ budgets { id amountUsd spentUsd remainingUsd keys { id budget { id } } } }"
    _, doc = await gql(url, q)
    assert [b["id"] for b in doc["data"]["budgets"]] == ["other-budget", "team-budget"]
    team = doc["data"]["budgets"][1]
    assert team["keys"] == [{"id": kid, "budget": {"id": "team-budget"}}]
    assert 0 < team["spentUsd"] < 0.001 and team["remainingUsd"] == round(2.0 - team["spentUsd"], 9)
    _, doc = await gql(url, q, headers={"Authorization": f"Bearer {secret}"})
    assert [b["id"] for b in doc["data"]["budgets"]] == ["team-budget"]
    _, doc = await gql(url, "{ me { budget { id amountUsd remainingUsd } } }",
                       headers={"Authorization": f"Bearer {secret}"})
    assert doc["data"]["me"]["budget"]["id"] == "team-budget"
    _, doc = await gql(url, "{ keys(first: 1) { nodes { id budgetId } pageInfo { hasNextPage endCursor } } }")
    page = doc["data"]["keys"]
    assert page["nodes"][0]["id"] == kid and page["pageInfo"]["hasNextPage"] is True
    _, doc = await gql(url, "query($a: String) { keys(first: 5, after: $a) { nodes { id } pageInfo { hasNextPage } } }",
                       {"a": page["pageInfo"]["endCursor"]})
    assert len(doc["data"]["keys"]["nodes"]) == 1 and doc["data"]["keys"]["pageInfo"]["hasNextPage"] is False


async def test_admin_fields_refuse_virtual_keys(start_proxy):
    url = str((await start_proxy(_config())).make_url(""))
    kid, secret = await _key(url)
    h = {"Authorization": f"Bearer {secret}"}
    for q in ("{ keys { nodes { id } } }", "{ providers { name } }",
              'mutation { createKey(input: {name: "x"}) { secret } }', f'mutation {{ revokeKey(id: "{kid}") {{ id }} }}'):
        status, doc = await gql(url, q, headers=h)
        assert status == 200 and codes(doc) == ["FORBIDDEN"], (q, doc)
    _, doc = await gql(url, "{ me { id } }", headers=h)
    assert doc["data"]["me"]["id"] == kid          # the key still works: nothing was revoked
    await gql(url, "{ me { id } }", headers={"Authorization": "Bearer sk-llm-guess"})
    async with aiohttp.ClientSession() as s, s.get(url + "/admin/audit", headers=ADMIN) as r:
        audit = (await r.json())["data"]
    denied = [e for e in audit if e["action"] == "auth.forbidden"]
    assert len(denied) == 4 and {e["actor"] for e in denied} == {kid}
    failed = [e for e in audit if e["action"] == "auth.failure"]
    assert len(failed) == 1 and failed[0]["detail"]["key_prefix"] == "sk-llm-gues"


async def test_providers_and_revoke(start_proxy):
    url = str((await start_proxy(_config())).make_url(""))
    kid, secret = await _key(url)
    _, doc = await gql(url, CHAT, {"input": chat_input()}, headers={"Authorization": f"Bearer {secret}"})
    _, doc = await gql(url, "{ providers { name type targets { target state inflight successes errors } } }")
    assert doc["data"]["providers"] == [{"name": "local", "type": "mock", "targets": [
        {"target": "local/mock", "state": "closed", "inflight": 0, "successes": 1, "errors": 0}]}]
    _, doc = await gql(url, "mutation($id: ID!) { revokeKey(id: $id) { id revoked } }", {"id": kid})
    assert doc["data"]["revokeKey"] == {"id": kid, "revoked": True}
    _, doc = await gql(url, "{ me { id } }", headers={"Authorization": f"Bearer {secret}"})
    assert codes(doc) == ["UNAUTHENTICATED"]
    _, doc = await gql(url, 'mutation { revokeKey(id: "key_missing") { id } }')
    assert codes(doc) == ["NOT_FOUND"]
    _, doc = await gql(url, 'mutation { createKey(input: {sourceType: "robot"}) { secret } }')
    assert codes(doc) == ["BAD_USER_INPUT"] and doc["errors"][0]["extensions"]["param"] == "source_type"


async def test_bad_keys_share_the_rest_auth_throttle(start_proxy):
    url = str((await start_proxy(_config(server={"auth_failures_per_minute": 2}))).make_url(""))
    bad = {"Authorization": "Bearer sk-llm-guess"}
    async with aiohttp.ClientSession() as s, s.get(url + "/v1/models", headers=bad) as r:
        assert r.status == 401
    _, doc = await gql(url, "{ me { id } }", headers=bad)
    assert codes(doc) == ["UNAUTHENTICATED"]
    _, doc = await gql(url, CHAT, {"input": chat_input()}, headers=bad)     # the third from this address
    assert codes(doc) == ["RATE_LIMITED"] and doc["errors"][0]["extensions"]["errorCode"] == "auth_throttled"
    _, doc = await gql(url, "{ me { id } }")                                 # a good key is never refused
    assert doc["data"]["me"]["id"] == "master"
