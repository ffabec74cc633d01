"""Budget alerts fired are recorded in the ledger (SQLite and PostgreSQL) and read back through
GET /admin/budgets[/{id}] and GraphQL `Budget.alerts`: the thresholds real calls crossed, once each."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.cost.periods import iso, period_start
from proxy.gateway import GATEWAY
from proxy.pipeline.budget import alert_event
from proxy.store.budgets import Budget
from tests.cost_helpers import PER_CALL_NANOS, chat_body, priced_config, request
from tests.graphql_helpers import gql
from tests.keys_helpers import ledger_url  # noqa: F401  (fixture)

THRESHOLDS = [25, 50, 90, 150]


async def _alerts(url: str, bid: str, want: int) -> list[dict[str, Any]]:
    """The budget's alerts once `want` are recorded (they are written in the background, within ms)."""
    deadline = time.monotonic() + 5
    while True:
        st, b, _ = await request(url, "GET", f"/admin/budgets/{bid}")
        assert st == 200, b
        if len(b["alerts"]) >= want or time.monotonic() > deadline:
            return b["alerts"]
        await asyncio.sleep(0.02)


async def test_crossed_thresholds_are_listed_once_each(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(priced_config(ledger_url, budgets={"alerts": {"thresholds": THRESHOLDS}}))
    url = str(server.make_url(""))
    st, b, _ = await request(url, "POST", "/admin/budgets", {"id": "team-a", "amount_usd": 4 * PER_CALL_NANOS / 1e9,
                                                             "period": "monthly"})
    assert st == 200 and b["alerts"] == [], b
    for _ in range(4):          # 25%, 50%, 75%, 100%: crosses 25, 50 and 90; never 150
        st, body, _ = await request(url, "POST", "/v1/chat/completions", chat_body("team-a"))
        assert st == 200, body
    st, body, _ = await request(url, "POST", "/v1/chat/completions", chat_body("team-a"))
    assert st == 429, body      # refused by the hard budget: spends nothing, fires nothing
    alerts = await _alerts(url, "team-a", 3)
    assert [a["threshold"] for a in alerts] == [25, 50, 90]
    assert [round(a["spent_usd"] * 1e9) for a in alerts] == [PER_CALL_NANOS, 2 * PER_CALL_NANOS, 4 * PER_CALL_NANOS]
    start = iso(period_start("monthly", time.time()))
    assert all(a["scope_value"] == "*" and a["period_start"] == start for a in alerts)
    assert all(abs(a["fired_at"] - time.time()) < 60 for a in alerts)

    # A replica without a shared counter (or a retry) reporting the same crossing adds no row; an alert
    # of an earlier period is not this period's.
    alerter = server.app[GATEWAY].accounting.alerter
    budget = Budget(id="team-a", amount_nanos=4 * PER_CALL_NANOS, period="monthly")
    now_start = int(period_start("monthly", time.time()))
    alerter.notify(alert_event(budget, f"team-a|*|{now_start}", 50, 2 * PER_CALL_NANOS))
    alerter.notify(alert_event(budget, f"team-a|*|{now_start - 40 * 86400}", 150, 9 * PER_CALL_NANOS))
    await alerter.close()       # drains the records queue (what shutdown does)
    st, listing, _ = await request(url, "GET", "/admin/budgets")
    [row] = [b for b in listing["data"] if b["id"] == "team-a"]
    assert [a["threshold"] for a in row["alerts"]] == [25, 50, 90]

    status, doc = await gql(url, "{ budgets { id alerts { threshold spentUsd scopeValue periodStart } } }")
    assert status == 200 and "errors" not in doc, doc
    [got] = [b["alerts"] for b in doc["data"]["budgets"] if b["id"] == "team-a"]
    assert [(a["threshold"], a["scopeValue"], a["periodStart"]) for a in got] == [(25, "*", start), (50, "*", start),
                                                                                 (90, "*", start)]


async def test_scoped_budget_alerts_per_pool(start_proxy, ledger_url):  # noqa: F811
    """A per-key soft budget: each key's pool crosses on its own; GraphQL shows a virtual key its own."""
    server = await start_proxy(priced_config(ledger_url, budgets={"alerts": {"thresholds": [50, 100]}}))
    url = str(server.make_url(""))
    st, _, _ = await request(url, "POST", "/admin/budgets", {"id": "per-key", "amount_usd": 2 * PER_CALL_NANOS / 1e9,
                                                             "period": "daily", "scope": "key", "hard": False})
    assert st == 200
    keys = []
    for name in ("k1", "k2"):
        st, k, _ = await request(url, "POST", "/admin/keys", {"name": name, "budget_id": "per-key"})
        assert st == 200, k
        keys.append(k)
    for key, n in ((keys[0], 3), (keys[1], 1)):   # k1: 50%, 100%, 150% (over: soft); k2: 50%
        for _ in range(n):
            st, body, _ = await request(url, "POST", "/v1/chat/completions", chat_body(),
                                        {"Authorization": f"Bearer {key['key']}"})
            assert st == 200, body
    alerts = await _alerts(url, "per-key", 3)
    assert sorted((a["scope_value"], a["threshold"]) for a in alerts) == sorted(
        [(keys[0]["id"], 50), (keys[0]["id"], 100), (keys[1]["id"], 50)])
    status, doc = await gql(url, "{ budgets { id alerts { threshold scopeValue } } }",
                            headers={"Authorization": f"Bearer {keys[1]['key']}"})
    assert status == 200 and "errors" not in doc, doc
    assert doc["data"]["budgets"] == [{"id": "per-key", "alerts": [{"threshold": 50, "scopeValue": keys[1]["id"]}]}]
