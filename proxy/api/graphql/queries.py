"""Query resolvers: the same store functions and snapshots as /v1/models, /v1/usage, /v1/usage/summary,
/admin/budgets, /admin/keys and /admin/providers, with the same rule: a virtual key sees its own rows."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import strawberry

from proxy.api.admin_budgets import budget_json
from proxy.api.graphql import types as t
from proxy.api.graphql.auth import BAD_USER_INPUT, Context, GQLError
from proxy.api.graphql.inputs import UsageFilter, usage_query
from proxy.api.usage import FLUSH_WAIT
from proxy.api.usage_summary import GROUPS, parse_local_time, parse_zone, summarize
from proxy.context import Principal
from proxy.cost.accounting import Accounting
from proxy.cost.attribution import SCOPE_COLUMNS
from proxy.cost.periods import iso, period_start
from proxy.cost.prices import usd
from proxy.errors import ProxyError
from proxy.keyservice import key_json
from proxy.routing.plan import may_use
from proxy.store import KeyRecord
from proxy.store import budgets as budget_sql
from proxy.store.budgets import Budget
from proxy.store.rollups import RollupQuery
from proxy.store.usage import UsageEvent, list_usage, spent_since

log = logging.getLogger("proxy.graphql")
KEY_SCAN = 1000                       # keys read per page when finding a budget's keys


def models(ctx: Context, who: Principal) -> list[t.Model]:
    catalog = ctx.gw.router.models
    by_name: dict[str, list[Any]] = {}
    for m in ctx.gw.config.models:
        by_name.setdefault(m.name, []).append(m)
    out = []
    for name, entries in by_name.items():
        if not any(may_use(who, n, catalog.resolve(n)) for n in (name, *(f"{name}@{m.version}" for m in entries
                                                                          if m.version))):
            continue
        out.append(t.Model(id=name, owned_by="llm-service",
                           aliases=sorted({a for m in entries for a in m.aliases}),
                           versions=[m.version for m in entries if m.version],
                           deprecated=catalog.resolve(name).deprecated or None))
    return out


def me(who: Principal) -> t.Principal:
    return t.Principal(id=strawberry.ID(who.id), name=who.name, is_master=who.is_master, source_id=who.source_id,
                       source_type=who.source_type, models=list(who.models) if who.models is not None else None,
                       limits=t.KeyLimits(rpm=who.rpm, tpm=who.tpm, max_concurrency=who.max_concurrency),
                       budget_id=who.budget_id, expires_at=int(who.expires_at) if who.expires_at else None)


def _accounting(ctx: Context) -> Accounting:
    acct = ctx.gw.accounting
    if acct is None:
        raise GQLError("Usage accounting is not enabled (accounting.enabled and a ledger are needed).",
                       "UNAVAILABLE")
    return acct


async def _flushed(ctx: Context) -> Accounting:
    """As /v1/usage: events still queued for the batched writer are written before the read."""
    acct = _accounting(ctx)
    try:
        await acct.writer.flush(FLUSH_WAIT)
    except Exception as e:
        log.warning("usage flush before a read failed: %s", type(e).__name__)
        raise GQLError("The usage ledger is not answering; try again shortly.", "UNAVAILABLE") from None
    return acct


def page_size(ctx: Context, first: int) -> int:
    top = ctx.cfg.max_page_size
    if not 1 <= first <= top:
        raise GQLError(f"Invalid 'first': expected an integer between 1 and {top}.", BAD_USER_INPUT,
                       param="first")
    return first


def _event(e: UsageEvent) -> t.UsageEvent:
    return t.UsageEvent(
        id=strawberry.ID(str(e.id)), request_id=e.request_id, timestamp=iso(e.ts), source_type=e.source_type,
        source_id=e.source_id, team=e.team, request_type=e.request_type, model=e.model, provider=e.provider,
        upstream_model=e.upstream_model, key_id=e.key_id, budget_id=e.budget_id, batch_id=e.batch_id,
        usage=t.Usage(prompt_tokens=e.prompt_tokens, completion_tokens=e.completion_tokens,
                      total_tokens=e.prompt_tokens + e.completion_tokens, cached_tokens=e.cached_tokens),
        cost_usd=usd(e.cost_nanos) if e.cost_nanos is not None else None, saved_cost_usd=usd(e.saved_nanos) or 0.0,
        cached=e.cached, is_async=e.is_async, stream=e.stream, status=e.status, error=e.error,
        latency_ms=e.latency_ms, time_to_first_token_ms=e.ttft_ms, estimated=e.estimated, ingress=e.ingress,
        custom_id=e.custom_id)


async def usage(ctx: Context, who: Principal, f: UsageFilter | None, first: int,
                after: str | None) -> t.UsageConnection:
    n = page_size(ctx, first)
    try:
        before = int(after) if after is not None else None
    except ValueError:
        raise GQLError("Invalid 'after': expected a cursor from pageInfo.endCursor.", BAD_USER_INPUT,
                       param="after") from None
    acct = await _flushed(ctx)
    rows = await list_usage(acct.ledger, usage_query(f, None if who.is_master else who.id, before=before,
                                                     limit=n + 1))
    nodes = [_event(e) for e in rows[:n]]
    return t.UsageConnection(edges=[t.UsageEdge(cursor=e.id, node=e) for e in nodes], nodes=nodes,
                             page_info=t.PageInfo(has_next_page=len(rows) > n,
                                                  end_cursor=nodes[-1].id if nodes else None))


async def usage_summary(ctx: Context, who: Principal, group: t.UsageGroupBy, f: UsageFilter | None,
                        tz: str = "UTC") -> list[t.UsageGroup]:
    """As /v1/usage/summary: the hourly rollups, days and hours labelled in `tz`."""
    assert group.value in GROUPS
    f = f or UsageFilter()
    try:
        zone = parse_zone(tz)
        since, until = parse_local_time(f.since, "since", zone), parse_local_time(f.until, "until", zone)
    except ProxyError as e:
        raise GQLError(e.message, BAD_USER_INPUT, param=e.param if e.param == "tz" else f"filter.{e.param}") from None
    q = RollupQuery(since=since, until=until, key_id=f.key_id if who.is_master else who.id,
                    source_id=f.source_id, model=f.model, budget_id=f.budget_id)
    acct = await _flushed(ctx)
    rows = await summarize(acct.ledger, q, group.value, zone, histogram=False,
                           events_of=None if f.request_id is None else ("request_id", f.request_id))
    return [t.UsageGroup(key="" if g is None else str(g), requests=r.requests, errors=r.errors,
                         cache_hits=r.cache_hits, prompt_tokens=r.prompt_tokens,
                         completion_tokens=r.completion_tokens, total_tokens=r.prompt_tokens + r.completion_tokens,
                         cost_usd=usd(r.cost_nanos), saved_cost_usd=usd(r.saved_nanos) or 0.0,
                         unpriced_requests=r.unpriced, estimated_requests=r.estimated) for g, r in rows]


def _pool(scope: str, who: Principal) -> str | None:
    """The calling key's own pool of a scoped budget (pipeline/budget.py keys its counters the same way)."""
    if scope == "key":
        return who.id
    if scope == "source":
        return who.source_id
    if scope == "team":
        team = who.metadata.get("team") if isinstance(who.metadata, dict) else None
        return team if isinstance(team, str) and team else None
    return None


async def _budget(ctx: Context, acct: Accounting, b: Budget) -> t.Budget:
    d = await budget_json(acct, b)               # /admin/budgets' view: global budgets' spend included
    spent, reserved = d.get("spent_usd"), d.get("reserved_usd")
    who = await ctx.principal()
    if spent is None and not who.is_master and (pool := _pool(b.scope, who)) is not None:
        start = period_start(b.period, time.time())
        live = await acct.reservations.read(f"{b.id}|{pool}|{int(start)}")
        if live is not None:
            spent, reserved = usd(live[0]), usd(live[1])
        else:
            spent = usd(await spent_since(acct.ledger, b.id, start, SCOPE_COLUMNS[b.scope], pool))
            reserved = 0.0
    remaining = None if spent is None else max(0.0, round(d["amount_usd"] - spent - (reserved or 0.0), 9))
    mine = "*" if b.scope == "global" else (_pool(b.scope, who) or "").replace("|", "_")   # as counters name it
    alerts = [t.BudgetAlert(**a) for a in d["alerts"] if who.is_master or a["scope_value"] == mine]
    return t.Budget(id=b.id, name=b.name, amount_usd=d["amount_usd"], period=b.period, scope=b.scope, hard=b.hard,
                    created_at=d["created_at"], updated_at=d["updated_at"], period_start=d["period_start"],
                    spent_usd=spent, reserved_usd=reserved, remaining_usd=remaining, alerts=alerts)


async def budget_by_id(ctx: Context, bid: str) -> t.Budget | None:
    who = await ctx.principal()
    if not who.is_master and who.budget_id != bid:
        return None                              # a virtual key sees only its own budget
    acct = _accounting(ctx)
    b = await acct.budgets.get(bid)              # the pipeline's cached definitions (cache_ttl)
    return None if b is None else await _budget(ctx, acct, b)


async def budgets(ctx: Context, who: Principal) -> list[t.Budget]:
    acct = _accounting(ctx)
    if not who.is_master:
        b = await budget_sql.get(acct.ledger, who.budget_id) if who.budget_id else None
        return [] if b is None else [await _budget(ctx, acct, b)]
    out: list[t.Budget] = []
    after: str | None = None
    while True:                                  # every budget: the list is small (definitions, not usage)
        rows = await budget_sql.list_all(acct.ledger, limit=KEY_SCAN, after=after)
        out += [await _budget(ctx, acct, b) for b in rows]
        if len(rows) < KEY_SCAN:
            return out
        after = rows[-1].id


def api_key(rec: KeyRecord) -> t.ApiKey:
    d = key_json(rec)                            # the admin API's rendering: no hash, never the secret
    return t.ApiKey(id=d["id"], name=d["name"], key_prefix=d["key_prefix"], models=d["models"], rpm=d["rpm"],
                    tpm=d["tpm"], max_concurrency=d["max_concurrency"], budget_id=d["budget_id"],
                    source_id=d["source_id"], source_type=d["source_type"], metadata=d["metadata"],
                    expires_at=d["expires_at"], disabled=d["disabled"], revoked=d["revoked"],
                    revoked_at=d["revoked_at"], created_at=d["created_at"], updated_at=d["updated_at"])


async def keys_of_budget(ctx: Context, bid: str) -> list[t.ApiKey]:
    who = await ctx.principal()
    store = ctx.gw.keys
    if store is None:
        return []
    if not who.is_master:
        rec = await store.ledger.get_key(who.id)
        return [api_key(rec)] if rec is not None and rec.budget_id == bid else []
    if ctx.keys_by_budget is None:               # every Budget.keys of this request reads one scan
        ctx.keys_by_budget = asyncio.ensure_future(_keys_by_budget(store.ledger))
    return [api_key(r) for r in (await ctx.keys_by_budget).get(bid, [])]


async def _keys_by_budget(ledger: Any) -> dict[str, list[KeyRecord]]:
    by_budget: dict[str, list[KeyRecord]] = {}
    after: str | None = None
    while True:                                  # admin listing, paged as GET /admin/keys pages
        recs = await ledger.list_keys(limit=KEY_SCAN, after=after, include_revoked=False)
        for r in recs:
            if r.budget_id is not None:
                by_budget.setdefault(r.budget_id, []).append(r)
        if len(recs) < KEY_SCAN:
            return by_budget
        after = recs[-1].id


async def keys(ctx: Context, first: int, after: str | None) -> t.KeyConnection:
    await ctx.master()
    n = page_size(ctx, first)
    store = ctx.gw.keys
    if store is None:
        raise GQLError("The key store is not configured.", "UNAVAILABLE")
    recs = await store.ledger.list_keys(limit=n + 1, after=after, include_revoked=False)
    store.audit.enqueue("key.list", "master", detail={"via": "graphql"})
    nodes = [api_key(r) for r in recs[:n]]
    return t.KeyConnection(edges=[t.KeyEdge(cursor=k.id, node=k) for k in nodes], nodes=nodes,
                           page_info=t.PageInfo(has_next_page=len(recs) > n,
                                                end_cursor=nodes[-1].id if nodes else None))


def providers(ctx: Context) -> list[t.ProviderHealth]:
    gw = ctx.gw
    snap = gw.router.health.snapshot()          # what GET /admin/providers renders
    out = []
    for name, b in gw.backends.items():
        targets = [t.TargetHealth(target=k, state=v["state"], consecutive_failures=v["consecutive_failures"],
                                  open_for_s=v["open_for_s"], inflight=v["inflight"],
                                  latency_ewma_ms=v["latency_ewma_ms"], successes=v["successes"],
                                  errors=v["errors"], last_error=v["last_error"] or None)
                   for k, v in snap["targets"].items() if k.startswith(name + "/")]
        out.append(t.ProviderHealth(name=name, type=b.config.type, health=snap["providers"].get(name),
                                    targets=targets))
    return out
