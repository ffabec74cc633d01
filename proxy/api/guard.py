"""What every /admin route checks first: the caller holds the master key. And a JSON-object body reader."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.api.parse import credential_from
from proxy.audit import ACTOR
from proxy.errors import Forbidden, InvalidRequest
from proxy.gateway import GATEWAY
from proxy.keyservice import parse_time
from proxy.pipeline.auth import Principal


async def require_master(request: web.Request) -> Principal:
    """401 without a valid key, 403 for a virtual key; records the actor for the audit log."""
    who = await request.app[GATEWAY].auth.authenticate(credential_from(request.headers))
    request[ACTOR] = who.id
    if not who.is_master:
        raise Forbidden("The admin API needs the master key; virtual keys may not use it.")
    return who


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


MAX_LIMIT = 1000


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list envelope (files, batches, budgets, usage): `first_id`/`last_id` page the next call."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def limit_param(request: web.Request, default: int = 20, maximum: int = MAX_LIMIT) -> int:
    """The `limit` query parameter of a paginated list, or a 400 naming it."""
    raw = request.query.get("limit")
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= maximum:
        raise InvalidRequest(f"Invalid 'limit': expected an integer between 1 and {maximum}.", param="limit",
                             code="invalid_value")
    return n


def time_param(request: web.Request, name: str) -> float | None:
    """A `since`/`until` query parameter: unix seconds or ISO 8601, or a 400 naming it."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return parse_time(float(raw), name)
    except ValueError:
        return parse_time(raw, name)
