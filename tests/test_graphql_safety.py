"""GraphQL safety: depth (introspection included), aliases, page size, introspection switch, masked
errors, and the committed schema.graphql matching the code."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
from graphql import get_introspection_query

from proxy.api.graphql import queries
from proxy.api.graphql.schema import sdl
from tests.conftest import make_config
from tests.graphql_helpers import ADMIN, STREAM, WSClient, chat_input, codes, gql, ws_connect

ROOT = Path(__file__).resolve().parent.parent


def _bomb(levels: int) -> str:
    q = "id"
    for i in range(levels):
        q = ("budget { " if i % 2 == 0 else "keys { ") + q + " }"
    return "{ budgets { " + q + " } }"


async def test_schema_file_matches_the_code():
    assert (ROOT / "schema.graphql").read_text() == sdl(), \
        "schema.graphql is stale: python -m proxy.api.graphql.schema > schema.graphql"


async def test_depth_bomb_is_refused_before_any_resolver(start_proxy, monkeypatch):
    url = str((await start_proxy(make_config())).make_url(""))
    ran = []
    monkeypatch.setattr(queries, "budgets", lambda *a: ran.append(1))
    status, doc = await gql(url, _bomb(40))
    assert status == 200 and codes(doc) == ["QUERY_TOO_DEEP"] and doc.get("data") is None and ran == []
    # fragments count as their fields
    frag = "fragment K on ApiKey { budget { keys { budget { keys { budget { keys { id } } } } } } } "
    _, doc = await gql(url, frag + "{ budgets { keys { budget { keys { ...K } } } } }")
    assert codes(doc) == ["QUERY_TOO_DEEP"]
    _, doc = await gql(url, "{ me { limits { rpm } } }")            # shallow queries still run
    assert "errors" not in doc


async def test_introspection_is_depth_limited_and_configurable(start_proxy):
    url = str((await start_proxy(make_config())).make_url(""))
    _, doc = await gql(url, "{ __schema { queryType { name } } }")
    assert doc["data"]["__schema"]["queryType"]["name"] == "Query"
    _, doc = await gql(url, get_introspection_query())              # 15 levels of ofType: over 10
    assert codes(doc) == ["QUERY_TOO_DEEP"]
    cycle = "name"
    for _ in range(6):                                               # fields -> type -> fields -> ...
        cycle = "fields { type { " + cycle + " } }"
    _, doc = await gql(url, '{ __type(name: "Budget") { ' + cycle + " } }")
    assert codes(doc)[0] == "QUERY_TOO_DEEP" and doc.get("data") is None   # graphql-core's own rule may add one
    url = str((await start_proxy(make_config(graphql={"introspection": False, "max_depth": 20}))).make_url(""))
    _, doc = await gql(url, "{ __schema { queryType { name } } }")
    assert doc.get("data") is None and doc["errors"] and "introspection" in doc["errors"][0]["message"].lower()


async def test_alias_and_page_size_limits(start_proxy):
    url = str((await start_proxy(make_config(graphql={"max_aliases": 3, "max_page_size": 20}))).make_url(""))
    _, doc = await gql(url, "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(4)) + " }")
    assert codes(doc) == ["TOO_MANY_ALIASES"]
    _, doc = await gql(url, "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(3)) + " }")
    assert "errors" not in doc and doc["data"]["a2"]["id"] == "master"
    _, doc = await gql(url, "{ usage(first: 21) { nodes { id } } }")
    assert codes(doc) == ["BAD_USER_INPUT"] and doc["errors"][0]["extensions"]["param"] == "first"
    _, doc = await gql(url, "{ keys(first: 0) { nodes { id } } }")
    assert codes(doc) == ["BAD_USER_INPUT"]


async def test_limits_apply_over_websocket(start_proxy):
    url = str((await start_proxy(make_config(graphql={"max_depth": 3}))).make_url(""))
    async with aiohttp.ClientSession() as s:
        ws = await ws_connect(s, url)
        c = WSClient(ws)
        assert (await c.init(ADMIN))["type"] == "connection_ack"
        op = await c.subscribe(STREAM, {"input": chat_input()})      # 4 levels with toolCallDeltas.function.name
        _, last = await c.collect(op)
        assert last["type"] == "error" and last["payload"][0]["extensions"]["code"] == "QUERY_TOO_DEEP"
        await ws.close()


async def test_unexpected_errors_are_masked(start_proxy, monkeypatch):
    url = str((await start_proxy(make_config())).make_url(""))

    def boom(*_):
        raise RuntimeError("db password hunter2 at /srv/app.py line 3")

    monkeypatch.setattr(queries, "providers", boom)
    status, doc = await gql(url, "{ providers { name } }")
    text = orjson.dumps(doc).decode()
    assert status == 200 and codes(doc) == ["INTERNAL_SERVER_ERROR"]
    assert doc["errors"][0]["message"] == "Unexpected error."
    assert "hunter2" not in text and "Traceback" not in text and "app.py" not in text
    _, doc = await gql(url, "{ nope }")                                # validation errors are shown as they are
    assert "Cannot query field 'nope'" in doc["errors"][0]["message"]


async def test_malformed_requests_get_graphql_errors(start_proxy):
    url = str((await start_proxy(make_config())).make_url(""))
    async with aiohttp.ClientSession() as s:
        for kw in ({"data": b"{not json", "headers": {**ADMIN, "Content-Type": "application/json"}},
                   {"data": b"{}", "headers": {**ADMIN, "Content-Type": "application/json"}}):
            async with s.post(url + "/graphql", **kw) as r:
                doc = await r.json()
                assert r.status == 400 and codes(doc) == ["BAD_REQUEST"], doc
        async with s.get(url + "/graphql", params={"query": 'mutation { revokeKey(id: "x") { id } }'},
                         headers=ADMIN) as r:                   # mutations only over POST
            assert r.status == 400 and codes(await r.json()) == ["BAD_REQUEST"]
