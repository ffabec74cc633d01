"""Budgets end to end: atomic reservations under concurrency (SQLite and PostgreSQL), refusals that
record nothing, restart seeding, alerts, and the admin API."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from proxy.app import build_app
from tests.cost_helpers import ADMIN, PER_CALL_NANOS, chat_body, priced_config, request
from tests.keys_helpers import ledger_url  # noqa: F401  (fixture)


async def _count_rows(server) -> tuple[int, float]:
    status, body, _ = await request(str(server.make_url("")), "GET", "/v1/usage/summary?group_by=model")
    assert status == 200, body
    total = body["total"]
    return total["requests"], total["cost"]


async def test_200_concurrent_calls_never_overspend(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(priced_config(ledger_url))
    url = str(server.make_url(""))
    st, b, _ = await request(url, "POST", "/admin/budgets",
                             {"id": "team-a", "amount_usd": 50 * PER_CALL_NANOS / 1e9, "period": "daily"})
    assert st == 200, b
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
        results = await asyncio.gather(*[request(url, "POST", "/v1/chat/completions", chat_body("team-a"),
                                                 session=s) for _ in range(200)])
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(ok) == 50 and len(refused) == 150
    assert all(r[1]["error"]["code"] == "insufficient_quota" and r[2]["x-should-retry"] == "false" for r in refused)
    assert all(r[2]["x-llm-cost"] == "0.000016" for r in ok)
    requests, cost = await _count_rows(server)
    assert requests == 50                                   # every admitted call recorded, no refused one
    assert round(cost * 1e9) == 50 * PER_CALL_NANOS          # spend == budget, never above
    st, b, _ = await request(url, "GET", "/admin/budgets/team-a")
    assert round(b["spent_usd"] * 1e9) == 50 * PER_CALL_NANOS and b["reserved_usd"] == 0


async def test_refused_calls_record_nothing_and_spend_nothing(start_proxy, tmp_path):
    server = await start_proxy(priced_config(f"sqlite:///{tmp_path}/l.db"))
    url = str(server.make_url(""))
    await request(url, "POST", "/admin/budgets", {"id": "tiny", "amount_usd": 0.00001, "period": "monthly"})
    await request(url, "POST", "/admin/budgets", {"id": "big", "amount_usd": 1, "period": "total"})
    bad = [
        (chat_body("big", messages=[]), ADMIN, 400),                     # bad input
        (chat_body("big", temperature=9), ADMIN, 400),
        (chat_body("big"), {"Authorization": "Bearer sk-wrong"}, 401),   # auth failure
        (chat_body("big", model="nope"), ADMIN, 404),                    # unknown model
        (chat_body("tiny"), ADMIN, 429),                                 # over budget: worst case > amount
    ]
    for body, headers, want in bad:
        st, b, _ = await request(url, "POST", "/v1/chat/completions", body, headers)
        assert st == want, (body, b)
    msg = b["error"]["message"]                  # the budget refusal says which, spent, reserved, needed
    assert "'tiny' (monthly, $0.000010)" in msg and "$0.000000 spent and $0.000000 reserved" in msg, msg
    assert "could cost up to $0.0000" in msg, msg
    requests, _ = await _count_rows(server)
    assert requests == 0
    for bid in ("tiny", "big"):
        st, b, _ = await request(url, "GET", f"/admin/budgets/{bid}")
        assert b["spent_usd"] == 0 and b["reserved_usd"] == 0


async def test_spend_survives_a_restart(aiohttp_server, tmp_path):
    cfg = priced_config(f"sqlite:///{tmp_path}/l.db")
    first = await aiohttp_server(build_app(cfg))
    url = str(first.make_url(""))
    await request(url, "POST", "/admin/budgets", {"id": "b", "amount_usd": 3 * PER_CALL_NANOS / 1e9,
                                                   "period": "weekly"})
    for _ in range(2):
        assert (await request(url, "POST", "/v1/chat/completions", chat_body("b")))[0] == 200
    await first.close()                               # graceful: flushes the usage writer
    second = await aiohttp_server(build_app(cfg))     # a fresh process: counters seeded from the ledger
    url = str(second.make_url(""))
    assert (await request(url, "POST", "/v1/chat/completions", chat_body("b")))[0] == 200
    st, body, _ = await request(url, "POST", "/v1/chat/completions", chat_body("b"))
    assert st == 429, body


async def test_key_bound_budget_per_key_scope_and_soft_alerts(start_proxy, aiohttp_server, tmp_path):
    hits: list[dict] = []
    calls = {"n": 0}

    async def hook(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=503)            # retried with backoff
        hits.append(await request.json())
        return web.Response(status=204)

    wh = web.Application()
    wh.router.add_post("/hook", hook)
    hook_server = await aiohttp_server(wh)
    cfg = priced_config(f"sqlite:///{tmp_path}/l.db",
                        budgets={"alerts": {"webhook_url": str(hook_server.make_url("/hook")),
                                            "thresholds": [50, 100]}})
    server = await start_proxy(cfg)
    url = str(server.make_url(""))
    await request(url, "POST", "/admin/budgets", {"id": "per-key", "amount_usd": 2 * PER_CALL_NANOS / 1e9,
                                                   "period": "daily", "scope": "key", "hard": False})
    keys = []
    for name in ("k1", "k2"):
        st, k, _ = await request(url, "POST", "/admin/keys", {"name": name, "budget_id": "per-key"})
        assert st == 200, k
        keys.append(k)
    for _ in range(3):                                 # soft: the third call goes over and is still served
        st, _, _ = await request(url, "POST", "/v1/chat/completions", chat_body(),
                                 {"Authorization": f"Bearer {keys[0]['key']}"})
        assert st == 200
    st, _, _ = await request(url, "POST", "/v1/chat/completions", chat_body(),
                             {"Authorization": f"Bearer {keys[1]['key']}"})
    assert st == 200
    for _ in range(100):
        if len(hits) >= 3:
            break
        await asyncio.sleep(0.05)
    got = sorted((h["scope_value"], h["threshold"]) for h in hits)
    # k1 crossed 50% and 100% once each (not again on its third call); k2 only 50%.
    assert got == sorted([(keys[0]["id"], 50), (keys[0]["id"], 100), (keys[1]["id"], 50)])
    assert all(h["budget_id"] == "per-key" and h["type"] == "budget.threshold" for h in hits)
    # A virtual key sees only its own usage; the master key sees all.
    st, mine, _ = await request(url, "GET", "/v1/usage", headers={"Authorization": f"Bearer {keys[1]['key']}"})
    assert st == 200 and len(mine["data"]) == 1 and mine["data"][0]["key_id"] == keys[1]["id"]
    assert mine["data"][0]["metadata"]["budget_id"] == "per-key"
    st, everyone, _ = await request(url, "GET", "/v1/usage")
    assert len(everyone["data"]) == 4


async def test_admin_budgets_crud_and_validation(start_proxy, tmp_path):
    server = await start_proxy(priced_config(f"sqlite:///{tmp_path}/l.db"))
    url = str(server.make_url(""))
    st, b, _ = await request(url, "POST", "/admin/budgets", {"id": "x", "amount_usd": 10, "period": "yearly"})
    assert st == 400 and b["error"]["param"] == "period"
    st, b, _ = await request(url, "POST", "/admin/budgets", {"id": "x", "amount_usd": 10, "scope": "team",
                                                              "hard": False})
    assert st == 200 and b["scope"] == "team" and b["hard"] is False and b["period"] == "monthly"
    st, b, _ = await request(url, "POST", "/admin/budgets", {"id": "x", "amount_usd": 1})
    assert st == 400
    st, b, _ = await request(url, "PATCH", "/admin/budgets/x", {"amount_usd": 20.5})
    assert st == 200 and b["amount_usd"] == 20.5
    st, b, _ = await request(url, "GET", "/admin/budgets")
    assert [x["id"] for x in b["data"]] == ["x"]
    st, k, _ = await request(url, "POST", "/admin/keys", {"name": "v"})
    st, b, _ = await request(url, "GET", "/admin/budgets", headers={"Authorization": f"Bearer {k['key']}"})
    assert st == 403
    st, b, _ = await request(url, "DELETE", "/admin/budgets/x")
    assert st == 200 and b["deleted"] is True
    st, b, _ = await request(url, "GET", "/admin/budgets/x")
    assert st == 404
