"""DELETE /admin/cache (invalidate) and GET /admin/cache (hit/miss counters). Master key only.

Selectors, in the JSON body or the query string, exactly one of: `key` (an `x-llm-cache-key` value),
`model` (a configured model name), `namespace` (as in the stats, e.g. `src:team-a`, `key:<id>`, `shared`),
`source_id` / `key_id` (shorthands for those namespaces), or `all: true`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.api.guard import require_master
from proxy.errors import InvalidRequest, NotFound, Unavailable
from proxy.gateway import GATEWAY
from proxy.kv import KVError
from proxy.pipeline.cache import CacheStage

SELECTORS = ("key", "model", "namespace", "source_id", "key_id", "all")


async def _cache_for(request: web.Request) -> CacheStage:
    await require_master(request)
    gw = request.app[GATEWAY]
    if gw.cache is None:
        raise NotFound("The response cache is not enabled.")
    return gw.cache


async def _selector(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    body: Any = {}
    if raw.strip():
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("The request body must be JSON.") from None
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
    sel: dict[str, Any] = {k: v for k, v in request.query.items() if k in SELECTORS}
    sel.update({k: v for k, v in body.items() if k in SELECTORS})
    unknown = sorted(set(body) - set(SELECTORS))
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
    if sel.get("all") in (False, "false", "0"):
        del sel["all"]
    if len(sel) != 1:
        raise InvalidRequest(f"Give exactly one of: {', '.join(SELECTORS)}.", code="invalid_value")
    (name, value), = sel.items()
    if name != "all" and (not isinstance(value, str) or not value):
        raise InvalidRequest(f"Invalid '{name}': expected a non-empty string.", param=name, code="invalid_type")
    return sel


async def delete_cache(request: web.Request) -> web.Response:
    cache = await _cache_for(request)
    sel = await _selector(request)
    try:
        if "key" in sel:
            n = await cache.invalidate(key=sel["key"])
        elif "model" in sel:
            n = await cache.invalidate(model=sel["model"])
        elif "namespace" in sel:
            n = await cache.invalidate(ns=sel["namespace"])
        elif "source_id" in sel:
            n = await cache.invalidate(ns="src:" + sel["source_id"])
        elif "key_id" in sel:
            n = await cache.invalidate(ns="key:" + sel["key_id"])
        else:
            n = await cache.invalidate()
    except KVError:
        raise Unavailable("The cache store is unreachable; nothing was deleted.") from None
    return web.json_response({"deleted": n, "selector": sel})


async def cache_stats(request: web.Request) -> web.Response:
    cache = await _cache_for(request)
    return web.json_response({"object": "list", "data": cache.stats.snapshot()})


async def _close(app: web.Application) -> None:
    cache = app[GATEWAY].cache
    if cache is not None:
        await cache.close()


def setup(app: web.Application) -> None:
    app.router.add_delete("/admin/cache", delete_cache)
    app.router.add_get("/admin/cache", cache_stats)
    app.on_cleanup.append(_close)
