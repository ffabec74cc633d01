"""GET /v1/usage (events) and GET /v1/usage/summary (from the hourly rollups: proxy/api/usage_summary.py).

A virtual key sees only its own events; the master key sees all and may filter by `key`. Filters:
`request_id`, `batch_id`, `since`/`until` (unix seconds or ISO 8601), `key`, `source`, `model`, `budget`. Events are
newest first, paginated with `limit` and `after` (the previous page's `last_id`); `format=csv` for CSV.
Also wires the accounting's start (after the ledger opens) and its flush (before the ledger closes).
"""

from __future__ import annotations

import csv
import io
import logging
from typing import Any

import orjson
from aiohttp import web

from proxy.api.guard import limit_param, list_page, time_param
from proxy.api.parse import credential_from
from proxy.api.usage_summary import summary_body
from proxy.cost.accounting import Accounting
from proxy.cost.periods import iso
from proxy.cost.prices import usd
from proxy.errors import InvalidRequest, Unavailable
from proxy.gateway import GATEWAY
from proxy.store.usage import UsageEvent, UsageQuery, list_usage

log = logging.getLogger("proxy.usage")
FLUSH_WAIT = 2.0                               # seconds a read waits for the queued events to be written


def event_json(e: UsageEvent) -> dict[str, Any]:
    """The seed's Usage Event Schema (nested), plus the operational fields."""
    return {
        "id": e.id, "object": "usage_event", "request_id": e.request_id, "timestamp": iso(e.ts),
        "source": {"type": e.source_type, "id": e.source_id}, "request_type": e.request_type,
        "tokens": {"prompt": e.prompt_tokens, "completion": e.completion_tokens, "cached": e.cached_tokens},
        "model": e.model, "cost": usd(e.cost_nanos),
        "metadata": {"async": e.is_async, "cached": e.cached, "batch_id": e.batch_id, "budget_id": e.budget_id,
                     "custom_id": e.custom_id, "ingress": e.ingress},
        "key_id": e.key_id, "team": e.team, "provider": e.provider, "upstream_model": e.upstream_model,
        "status": e.status, "error": e.error, "stream": e.stream, "latency_ms": e.latency_ms,
        "time_to_first_token_ms": e.ttft_ms, "estimated": e.estimated, "saved_cost": usd(e.saved_nanos),
        "priced": e.cost_nanos is not None,
    }


CSV_COLS = ("id", "request_id", "timestamp", "source_type", "source_id", "request_type", "model", "provider",
            "upstream_model", "key_id", "budget_id", "prompt_tokens", "completion_tokens", "cached_tokens",
            "cost_usd", "saved_usd", "cached", "is_async", "batch_id", "stream", "status", "error", "latency_ms",
            "ttft_ms", "estimated", "custom_id", "ingress")


def _csv_row(e: UsageEvent) -> list[Any]:
    d = {**{c: getattr(e, c, None) for c in CSV_COLS}, "timestamp": iso(e.ts), "cost_usd": usd(e.cost_nanos),
         "saved_usd": usd(e.saved_nanos)}
    return [("" if d[c] is None else d[c]) for c in CSV_COLS]


async def _caller(request: web.Request) -> tuple[Accounting, str | None]:
    """The accounting and the key id the caller is limited to (None: master key, sees everything)."""
    gw = request.app[GATEWAY]
    who = await gw.auth.authenticate(credential_from(request.headers))
    acct = gw.accounting
    if acct is None:
        raise Unavailable("Usage accounting is not enabled (accounting.enabled and a ledger are needed).")
    try:
        await acct.writer.flush(FLUSH_WAIT)    # include events still waiting for the batched writer
    except Exception as e:                     # the ledger (or the writer process) is not answering
        log.warning("usage flush before a read failed: %s", type(e).__name__)
        raise Unavailable("The usage ledger is not answering; try again shortly.",
                          headers={"retry-after": "1"}) from None
    return acct, (None if who.is_master else who.id)


def _query(request: web.Request, own: str | None, limit: int) -> UsageQuery:
    q = request.query

    after = q.get("after")
    try:
        before = int(after) if after is not None else None
    except ValueError:
        raise InvalidRequest("Invalid 'after': expected a usage event id.", param="after") from None
    key = q.get("key")
    if own is not None:
        key = own                              # a virtual key sees only its own usage
    return UsageQuery(request_id=q.get("request_id"), key_id=key, source_id=q.get("source"),
                      model=q.get("model"), budget_id=q.get("budget"), batch_id=q.get("batch_id"), since=time_param(request, "since"), until=time_param(request, "until"),
                      before_id=before, limit=limit + 1)


async def list_events(request: web.Request) -> web.StreamResponse:
    acct, own = await _caller(request)
    limit = limit_param(request, 100)
    events = await list_usage(acct.ledger, _query(request, own, limit))
    has_more = len(events) > limit
    events = events[:limit]
    fmt = request.query.get("format", "json")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_COLS)
        w.writerows(_csv_row(e) for e in events)
        headers = {"x-has-more": "true" if has_more else "false"}
        if events:
            headers["x-last-id"] = str(events[-1].id)
        return web.Response(text=buf.getvalue(), content_type="text/csv", headers=headers)
    if fmt != "json":
        raise InvalidRequest("Invalid 'format': expected 'json' or 'csv'.", param="format", code="invalid_value")
    data = [event_json(e) for e in events]
    body = list_page(data, has_more)
    return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())


async def summary(request: web.Request) -> web.Response:
    acct, own = await _caller(request)
    return web.json_response(await summary_body(acct.ledger, request, own),
                             dumps=lambda o: orjson.dumps(o).decode())


async def _start(app: web.Application) -> None:
    acct = app[GATEWAY].accounting
    if acct is not None:
        acct.start()


async def _stop(app: web.Application) -> None:
    acct = app[GATEWAY].accounting
    if acct is not None:
        await acct.close()          # flushes every queued event while the ledger is still open


def setup(app: web.Application) -> None:
    """Call after the ledger's on_startup and before its on_cleanup are registered."""
    app.router.add_get("/v1/usage", list_events)
    app.router.add_get("/v1/usage/summary", summary)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
