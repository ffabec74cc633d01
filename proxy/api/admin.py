"""The admin API under /admin: virtual keys and the audit log. Master key only; a virtual key gets 403.

POST/GET /admin/keys, GET/PATCH/DELETE /admin/keys/{id}, POST /admin/keys/{id}/rotate, GET /admin/audit.
Lists are OpenAI-style: `{object: "list", data, has_more, first_id, last_id}` with `limit` and `after`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.api.guard import json_object, limit_param, require_master, time_param
from proxy.audit import ACTOR, client_ip
from proxy.errors import InvalidRequest, Unavailable
from proxy.keyservice import KeyStore, key_json
from proxy.store import AuditQuery

KEYSTORE = web.AppKey("keystore", KeyStore)


async def _admin(request: web.Request) -> KeyStore:
    await require_master(request)
    store = request.app.get(KEYSTORE)
    if store is None:
        raise Unavailable("The key store is not configured.")
    return store


def _page(items: list[dict[str, Any]], limit: int) -> web.Response:
    has_more = len(items) > limit
    items = items[:limit]
    return web.json_response({"object": "list", "data": items, "has_more": has_more,
                              "first_id": items[0]["id"] if items else None,
                              "last_id": items[-1]["id"] if items else None}, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=_dumps)


async def create_key(request: web.Request) -> web.Response:
    store = await _admin(request)
    rec, secret = await store.create(await json_object(request), actor=request[ACTOR], ip=client_ip(request))
    return _json(key_json(rec, secret))


async def list_keys(request: web.Request) -> web.Response:
    store = await _admin(request)
    limit = limit_param(request)
    include = request.query.get("include_revoked", "false").lower() in ("1", "true", "yes")
    recs = await store.ledger.list_keys(limit=limit + 1, after=request.query.get("after"), include_revoked=include)
    store.audit.enqueue("key.list", request[ACTOR], ip=client_ip(request))
    return _page([key_json(r) for r in recs], limit)


async def get_key(request: web.Request) -> web.Response:
    store = await _admin(request)
    rec = await store.get(request.match_info["id"])
    store.audit.enqueue("key.read", request[ACTOR], target=rec.id, ip=client_ip(request))
    return _json(key_json(rec))


async def patch_key(request: web.Request) -> web.Response:
    store = await _admin(request)
    rec = await store.update(request.match_info["id"], await json_object(request), actor=request[ACTOR],
                             ip=client_ip(request))
    return _json(key_json(rec))


async def delete_key(request: web.Request) -> web.Response:
    store = await _admin(request)
    rec = await store.revoke(request.match_info["id"], actor=request[ACTOR], ip=client_ip(request))
    return _json({"id": rec.id, "object": "api_key.deleted", "deleted": True})


async def rotate_key(request: web.Request) -> web.Response:
    store = await _admin(request)
    body = await json_object(request, optional=True)
    unknown = sorted(set(body) - {"grace_period"})
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                             code="unknown_parameter")
    rec, secret = await store.rotate(request.match_info["id"], body.get("grace_period"), actor=request[ACTOR],
                                     ip=client_ip(request))
    return _json(key_json(rec, secret))


def _audit_query(request: web.Request, limit: int) -> AuditQuery:
    q = request.query
    before: int | None = None
    if "after" in q:
        try:
            before = int(q["after"])
        except ValueError:
            raise InvalidRequest("Invalid 'after': expected an audit event id.", param="after") from None

    return AuditQuery(action=q.get("action"), actor=q.get("actor"), target=q.get("target"),
                      since=time_param(request, "since"), until=time_param(request, "until"),
                      before_id=before, limit=limit + 1)


async def list_audit(request: web.Request) -> web.Response:
    """Newest first; `after` is the last id of the previous page. Filters: action, actor, target, since, until."""
    store = await _admin(request)
    limit = limit_param(request, 100)
    query = _audit_query(request, limit)
    await store.audit.flush()                     # include failures still waiting in the queue
    events = await store.ledger.list_audit(query)
    store.audit.enqueue("audit.read", request[ACTOR], ip=client_ip(request))
    data = [{"id": e.id, "object": "audit_event", "ts": e.ts, "action": e.action, "actor": e.actor,
             "target": e.target, "ip": e.ip, "detail": e.detail} for e in events]
    return _page(data, limit)


def setup(app: web.Application, store: KeyStore) -> None:
    app[KEYSTORE] = store
    app.router.add_post("/admin/keys", create_key)
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_get("/admin/keys/{id}", get_key)
    app.router.add_patch("/admin/keys/{id}", patch_key)
    app.router.add_delete("/admin/keys/{id}", delete_key)
    app.router.add_post("/admin/keys/{id}/rotate", rotate_key)
    app.router.add_get("/admin/audit", list_audit)
