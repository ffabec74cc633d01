"""Who a call is billed to: its budget, source and team, from the key or the request's metadata (seed schema)."""

from __future__ import annotations

from proxy.context import ChatCall

SCOPE_COLUMNS = {"key": "key_id", "source": "source_id", "team": "team", "global": None}


def budget_id_of(call: ChatCall) -> str | None:
    key = call.key
    if key is not None and key.budget_id:
        return key.budget_id
    md = call.body.get("metadata")
    bid = md.get("budget_id") if isinstance(md, dict) else None
    return bid if isinstance(bid, str) and bid else None


def source_of(call: ChatCall) -> tuple[str | None, str | None]:
    """(source_type, source_id): the key's, else the request's metadata (seed schema)."""
    key = call.key
    if key is not None and key.source_id:
        return key.source_type, key.source_id
    md = call.body.get("metadata")
    if isinstance(md, dict):
        sid, stype = md.get("source_id"), md.get("source_type")
        return (stype if isinstance(stype, str) else None), (sid if isinstance(sid, str) else None)
    return None, None


def team_of(call: ChatCall) -> str | None:
    key = call.key
    md = key.metadata if key is not None else None
    team = md.get("team") if isinstance(md, dict) else None
    return team if isinstance(team, str) and team else None


def scope_value(scope: str, call: ChatCall) -> str:
    if scope == "key":
        return call.key.id if call.key is not None else "-"
    if scope == "source":
        return source_of(call)[1] or "-"
    if scope == "team":
        return team_of(call) or "-"
    return "*"


def batch_id_of(call: ChatCall) -> str | None:
    """The caller's grouping tag: the seed's `options.batch_id` (or `metadata.batch_id`), or the batch
    a line belongs to (`call.batch_id`)."""
    if call.batch_id:
        return call.batch_id
    body = call.body
    for holder in (body.get("options"), body.get("metadata")):
        if isinstance(holder, dict):
            b = holder.get("batch_id")
            if isinstance(b, str) and b:
                return b
    return None
