"""/v1/batches, OpenAI's Batch API run by the gateway for every provider: create, retrieve, list, cancel.
The work happens in the jobs worker (proxy/jobs/driver.py, runner.py); this is the HTTP surface."""

from __future__ import annotations

import time
from random import getrandbits
from typing import Any

import orjson
from aiohttp import web

from proxy.api.files import visible_file
from proxy.api.guard import list_page
from proxy.api.jobs import caller, runner
from proxy.api.parse import decode_json
from proxy.errors import InvalidRequest, NotFound
from proxy.jobs.driver import public
from proxy.jobs.jsonl import ENDPOINTS
from proxy.store import batches as store
from proxy.store.batches import CANCELLING, IN_PROGRESS, VALIDATING

WINDOW = 24 * 3600


def _json(obj: Any) -> web.Response:
    return web.json_response(obj, dumps=lambda o: orjson.dumps(o).decode())


def _metadata(md: Any) -> dict[str, str] | None:
    if md is None:
        return None
    if not isinstance(md, dict) or len(md) > 16 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in md.items()):
        raise InvalidRequest("Invalid 'metadata': at most 16 string keys (64 chars) with string values (512 chars).",
                             param="metadata", code="invalid_value")
    return md


async def create_batch(request: web.Request) -> web.Response:
    run = runner(request)
    key = await caller(request)
    body = decode_json(await request.read())
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
        raise InvalidRequest(f"Invalid 'endpoint': expected one of {', '.join(ENDPOINTS)}.", param="endpoint",
                             code="invalid_value")
    if body.get("completion_window") != "24h":
        raise InvalidRequest("Invalid 'completion_window': only '24h' is supported.", param="completion_window",
                             code="invalid_value")
    fid = body.get("input_file_id")
    if not isinstance(fid, str) or not fid:
        raise InvalidRequest("Missing required parameter: 'input_file_id'.", param="input_file_id",
                             code="missing_required_parameter")
    f = await visible_file(request, fid, key, "input_file_id")
    if f.purpose != "batch":
        raise InvalidRequest("The input file must have purpose 'batch'.", param="input_file_id",
                             code="invalid_value")
    now = int(time.time())
    doc: dict[str, Any] = {
        "id": f"batch_{getrandbits(96):024x}", "object": "batch", "endpoint": endpoint, "errors": None,
        "input_file_id": fid, "completion_window": "24h", "status": VALIDATING, "output_file_id": None,
        "error_file_id": None, "created_at": now, "in_progress_at": None, "expires_at": now + WINDOW,
        "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
        "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": None, "metadata": _metadata(body.get("metadata")),
    }
    await store.add_batch(run.ledger, doc, key.id)
    run.poke()
    return _json(doc)


async def _visible(request: web.Request) -> dict[str, Any]:
    key = await caller(request)
    got = await store.get_batch(runner(request).ledger, request.match_info["id"])
    if got is None or (not key.is_master and got[0] != key.id):
        raise NotFound(f"No batch found with id '{request.match_info['id']}'.", param="batch_id")
    return got[1]


async def get_batch(request: web.Request) -> web.Response:
    return _json(public(await _visible(request)))


async def cancel_batch(request: web.Request) -> web.Response:
    doc = await _visible(request)
    if doc["status"] in (VALIDATING, IN_PROGRESS):
        prev = doc["status"]
        doc.update(status=CANCELLING, cancelling_at=int(time.time()))
        if not await store.save_batch(runner(request).ledger, doc, expect=prev):
            doc = await _visible(request)
        runner(request).poke()
    return _json(public(doc))


async def list_batches(request: web.Request) -> web.Response:
    key = await caller(request)
    try:
        limit = min(100, max(1, int(request.query.get("limit", "20"))))
    except ValueError:
        raise InvalidRequest("Invalid 'limit': expected an integer.", param="limit", code="invalid_type") from None
    rows = await store.list_batches(runner(request).ledger, None if key.is_master else key.id,
                                    request.query.get("after"), limit + 1)
    data = [public(d) for d in rows[:limit]]
    return _json(list_page(data, len(rows) > limit))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{id}", get_batch)
    app.router.add_post("/v1/batches/{id}/cancel", cancel_batch)
