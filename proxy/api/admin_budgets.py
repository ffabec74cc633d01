"""/admin/budgets: create, list, read (with the current period's spend and alerts fired), update, delete.
Master key only.

Create body: `id`, `amount_usd`, `period` (daily|weekly|monthly|total), `scope` (key|source|team|global),
`hard` (default true), `name`. Keys refer to a budget by `budget_id`; requests by `metadata.budget_id`.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from aiohttp import web

from proxy.api.guard import json_object, limit_param, list_page, require_master
from proxy.audit import ACTOR, client_ip
from proxy.cost.accounting import Accounting
from proxy.cost.periods import iso, period_start
from proxy.cost.prices import usd, usd_to_nanos
from proxy.errors import InvalidRequest, NotFound, Unavailable
from proxy.gateway import GATEWAY
from proxy.store import budgets as sql
from proxy.store.budgets import PERIODS, SCOPES, Budget, FiredAlert
from proxy.store.rollups import GROUP_COLS

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
FIELDS = ("id", "name", "amount_usd", "period", "scope", "hard")
assert "budget" in GROUP_COLS


async def _admin(request: web.Request) -> Accounting:
    await require_master(request)
    gw = request.app[GATEWAY]
    if gw.accounting is None:
        raise Unavailable("Budgets need accounting.enabled and a ledger.")
    return gw.accounting


def _bad(param: str, msg: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {msg}", param=param, code=code)


def validate(body: dict[str, Any], *, patch: bool) -> dict[str, Any]:
    allowed = FIELDS[1:] if patch else FIELDS
    for k in body:
        if k not in allowed:
            raise InvalidRequest(f"Unrecognized request argument supplied: {k}", param=k, code="unknown_parameter")
    out: dict[str, Any] = {}
    if not patch:
        bid = body.get("id")
        if not isinstance(bid, str) or not _ID.match(bid):
            raise _bad("id", "expected 1-128 letters, digits or _ . : -", "invalid_type" if bid is not None
                       else "missing_required_parameter")
        out["id"] = bid
        if "amount_usd" not in body:
            raise InvalidRequest("Missing required parameter: 'amount_usd'.", param="amount_usd",
                                 code="missing_required_parameter")
    if "amount_usd" in body:
        a = body["amount_usd"]
        if isinstance(a, bool) or not isinstance(a, int | float | str):
            raise _bad("amount_usd", "expected a number of US dollars.", "invalid_type")
        try:
            nanos = usd_to_nanos(a)
        except Exception:
            raise _bad("amount_usd", "expected a number of US dollars.", "invalid_type") from None
        if nanos < 0:
            raise _bad("amount_usd", "must not be negative.")
        out["amount_nanos"] = nanos
    if "period" in body or not patch:
        p = body.get("period", "monthly")
        if p not in PERIODS:
            raise _bad("period", f"expected one of {', '.join(PERIODS)}.")
        out["period"] = p
    if "scope" in body or not patch:
        s = body.get("scope", "global")
        if s not in SCOPES:
            raise _bad("scope", f"expected one of {', '.join(SCOPES)}.")
        out["scope"] = s
    if "hard" in body or not patch:
        h = body.get("hard", True)
        if not isinstance(h, bool):
            raise _bad("hard", "expected a boolean.", "invalid_type")
        out["hard"] = h
    if "name" in body:
        n = body["name"]
        if not isinstance(n, str) or len(n) > 256:
            raise _bad("name", "expected a string of at most 256 characters.", "invalid_type")
        out["name"] = n
    return out


async def budget_json(acct: Accounting, b: Budget) -> dict[str, Any]:
    out: dict[str, Any] = {"id": b.id, "object": "budget", "name": b.name, "amount_usd": usd(b.amount_nanos),
                           "period": b.period, "scope": b.scope, "hard": b.hard,
                           "created_at": int(b.created_at), "updated_at": int(b.updated_at)}
    start = period_start(b.period, time.time())
    out["period_start"] = iso(start)
    if b.scope == "global":
        live = await acct.reservations.read(f"{b.id}|*|{int(start)}")
        if live is not None:
            out["spent_usd"], out["reserved_usd"] = usd(live[0]), usd(live[1])
        else:
            from proxy.store.usage import spent_since
            out["spent_usd"], out["reserved_usd"] = usd(await spent_since(acct.ledger, b.id, start, None, None)), 0.0
    out["alerts"] = [alert_json(a) for a in await sql.alerts_in_period(acct.ledger, b.id, start)]
    return out


def alert_json(a: FiredAlert) -> dict[str, Any]:
    return {"threshold": a.threshold, "spent_usd": usd(a.spent_nanos), "scope_value": a.scope_value,
            "period_start": iso(a.period_start), "fired_at": a.fired_at}


def _json(obj: Any) -> web.Response:
    return web.json_response(obj, dumps=lambda o: orjson.dumps(o).decode())


async def _audit(request: web.Request, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
    keys = request.app[GATEWAY].keys
    if keys is not None:
        await keys.audit.record(action, request[ACTOR], target=target, ip=client_ip(request), detail=detail)


async def create(request: web.Request) -> web.Response:
    acct = await _admin(request)
    f = validate(await json_object(request), patch=False)
    if await sql.get(acct.ledger, f["id"]) is not None:
        raise InvalidRequest(f"A budget with id '{f['id']}' already exists.", param="id", code="duplicate_id")
    now = time.time()
    b = Budget(created_at=now, updated_at=now, **f)
    await sql.insert(acct.ledger, b)
    acct.budgets.forget(b.id)
    await _audit(request, "budget.create", b.id, {"fields": sorted(f)})
    return _json(await budget_json(acct, b))


async def _get(acct: Accounting, bid: str) -> Budget:
    b = await sql.get(acct.ledger, bid)
    if b is None:
        raise NotFound(f"No budget with id '{bid}'.", param="id")
    return b


async def read(request: web.Request) -> web.Response:
    acct = await _admin(request)
    return _json(await budget_json(acct, await _get(acct, request.match_info["id"])))


async def list_budgets(request: web.Request) -> web.Response:
    acct = await _admin(request)
    limit = limit_param(request, 100)
    rows = await sql.list_all(acct.ledger, limit=limit + 1, after=request.query.get("after"))
    data = [await budget_json(acct, b) for b in rows[:limit]]
    return _json(list_page(data, len(rows) > limit))


async def patch(request: web.Request) -> web.Response:
    acct = await _admin(request)
    bid = request.match_info["id"]
    await _get(acct, bid)
    f = validate(await json_object(request), patch=True)
    b = await sql.update(acct.ledger, bid, f)
    acct.budgets.forget(bid)
    await _audit(request, "budget.update", bid, {"fields": sorted(f)})
    assert b is not None
    return _json(await budget_json(acct, b))


async def delete(request: web.Request) -> web.Response:
    acct = await _admin(request)
    bid = request.match_info["id"]
    await _get(acct, bid)
    await sql.delete(acct.ledger, bid)
    acct.budgets.forget(bid)
    await _audit(request, "budget.delete", bid)
    return _json({"id": bid, "object": "budget.deleted", "deleted": True})


def setup(app: web.Application) -> None:
    app.router.add_post("/admin/budgets", create)
    app.router.add_get("/admin/budgets", list_budgets)
    app.router.add_get("/admin/budgets/{id}", read)
    app.router.add_patch("/admin/budgets/{id}", patch)
    app.router.add_delete("/admin/budgets/{id}", delete)
