"""GET /v1/usage/summary: totals from the hourly rollups, grouped by model, source, key, budget, provider,
hour or day, with days cut in the caller's time zone (`tz`, an IANA name; default UTC).

`histogram=false` leaves out the latency histogram (the sums behind it are half a summary's work).
`since` / `until` are unix seconds or ISO 8601; without an offset they are read in `tz` (so
`since=2026-03-01&until=2026-03-02&tz=Europe/Berlin` is one Berlin day). An hour counts when it starts in
[since, until): see proxy/store/rollups.py for why, and for zones whose offset is not whole hours.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from proxy.cost.prices import usd
from proxy.errors import InvalidRequest
from proxy.store import Ledger, rollups
from proxy.store.rollups import GROUP_COLS, LATENCY_BOUNDS_MS, RollupQuery, Totals

GROUPS = tuple(g for g in GROUP_COLS if g != "total")


def parse_zone(raw: str | None) -> ZoneInfo:
    """An IANA zone name (default UTC), or a 400 naming `tz`."""
    raw = "UTC" if raw is None else raw
    try:
        if not raw or len(raw) > 64 or raw.startswith(("/", ".")) or ".." in raw:
            raise ValueError(raw)
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest("Invalid 'tz': expected an IANA time zone name such as 'Europe/Berlin'.",
                             param="tz", code="invalid_value") from None


def zone_param(request: web.Request) -> ZoneInfo:
    return parse_zone(request.query.get("tz"))


def parse_local_time(raw: str | None, name: str, zone: ZoneInfo) -> float | None:
    """Unix seconds, or ISO 8601 (a date or date-time; without an offset, read in `zone`)."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(f"Invalid '{name}': expected unix seconds or an ISO 8601 date-time.",
                                 param=name, code="invalid_value") from None
        return (dt if dt.tzinfo else dt.replace(tzinfo=zone)).timestamp()
    if value <= 0:
        raise InvalidRequest(f"Invalid '{name}': expected unix seconds or an ISO 8601 date-time.", param=name,
                             code="invalid_value")
    return value


def local_time_param(request: web.Request, name: str, zone: ZoneInfo) -> float | None:
    return parse_local_time(request.query.get(name), name, zone)


def rollup_query(request: web.Request, own: str | None, zone: ZoneInfo) -> RollupQuery:
    q = request.query
    return RollupQuery(since=local_time_param(request, "since", zone), until=local_time_param(request, "until", zone),
                       key_id=own if own is not None else q.get("key"), source_id=q.get("source"),
                       model=q.get("model"), provider=q.get("provider"), budget_id=q.get("budget"))


def _label(hour: int, group: str, zone: ZoneInfo) -> str:
    local = datetime.fromtimestamp(hour, UTC).astimezone(zone)
    return local.date().isoformat() if group == "day" else local.isoformat()


def regroup(rows: list[tuple[Any, Totals]], group: str, zone: ZoneInfo) -> list[tuple[Any, Totals]]:
    """Hour rows -> rows labelled with the local date (`day`) or local hour (`hour`) in `zone`."""
    if group not in ("day", "hour"):
        return rows
    out: dict[str, Totals] = {}
    for hour, t in rows:
        label = _label(hour, group, zone)
        have = out.get(label)
        if have is None:
            out[label] = t
        else:
            have.add(t)
    return sorted(out.items(), key=lambda kv: kv[0])


async def summarize(ledger: Ledger, q: RollupQuery, group: str, zone: ZoneInfo, histogram: bool = True,
                    events_of: tuple[str, str] | None = None) -> list[tuple[Any, Totals]]:
    """Totals per group from the rollups (or, narrowed to one request or batch, `events_of` = (column,
    value), from that column's indexed events); `day`/`hour` labelled in `zone`. Shared with GraphQL."""
    if events_of is not None:
        rows = await rollups.read_events(ledger, q, group, events_of[0], events_of[1], histogram)
    else:
        rows = await rollups.read(ledger, q, group, histogram)
    return regroup(rows, group, zone)


def events_of(request: web.Request) -> tuple[str, str] | None:
    for name in rollups.EVENT_FILTERS:
        if name in request.query:
            return name, request.query[name]
    return None


def totals_json(t: Totals, histogram: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": t.requests, "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
            "total_tokens": t.prompt_tokens + t.completion_tokens, "cached_tokens": t.cached_tokens,
            "cost": usd(t.cost_nanos), "saved_cost": usd(t.saved_nanos), "cache_hits": t.cache_hits,
            "errors": t.errors, "unpriced_requests": t.unpriced, "estimated_requests": t.estimated,
            "avg_latency_ms": round(t.latency_ms_sum / t.requests, 1) if t.requests else None}
    if histogram:
        out["latency_histogram"] = t.latency_buckets
    return out


async def summary_body(ledger: Ledger, request: web.Request, own: str | None) -> dict[str, Any]:
    group = request.query.get("group_by", "model")
    if group not in GROUPS:
        raise InvalidRequest(f"Invalid 'group_by': expected one of {', '.join(GROUPS)}.", param="group_by",
                             code="invalid_value")
    zone = zone_param(request)
    raw = request.query.get("histogram", "true").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidRequest("Invalid 'histogram': expected true or false.", param="histogram", code="invalid_value")
    histogram = raw in ("true", "1")
    rows = await summarize(ledger, rollup_query(request, own, zone), group, zone, histogram, events_of(request))
    total = Totals()
    data = []
    for g, t in rows:
        total.add(t)
        data.append({"object": "usage_summary", group: g, **totals_json(t, histogram)})
    body: dict[str, Any] = {"object": "list", "group_by": group, "tz": zone.key, "data": data, "total": totals_json(total, histogram)}
    if histogram:
        body["latency_bounds_ms"] = list(LATENCY_BOUNDS_MS)
    return body
