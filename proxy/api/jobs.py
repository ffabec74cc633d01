"""Async jobs over HTTP: submit (`options.async` in the envelope, or `x-llm-async: true`), poll, cancel;
and GET /admin/webhooks/failed.

A job is checked like the live call at submission (body, model, the key's scope, the webhook's host), so a
bad one is a 400 now rather than a failed job later. It is visible only to the key that made it (and the
master key): another key gets 404, as for a job that does not exist.
"""

from __future__ import annotations

import hashlib
import time
from random import getrandbits
from typing import Any

import orjson
from aiohttp import web

from proxy.api.parse import chat_call, credential_from, validate_chat, validate_embeddings
from proxy.context import Principal
from proxy.errors import InvalidRequest, NotFound, ProxyError, Unavailable
from proxy.gateway import GATEWAY
from proxy.jobs.runner import Runner
from proxy.jobs.webhooks import check_url
from proxy.store import jobs as store
from proxy.store.jobs import ENDED, Job

RUNNER = web.AppKey("jobs_runner", Runner)
WEBHOOK_HEADER = "x-llm-webhook-url"
KEPT_HEADERS = ("cache-control", "x-llm-cache-ttl", "x-llm-priority", "x-llm-fallbacks")


def runner(request: web.Request) -> Runner:
    r = request.app.get(RUNNER)
    if r is None:
        raise Unavailable("Async jobs need the ledger (storage.database) and jobs.enabled.",
                          code="jobs_disabled")
    return r


async def caller(request: web.Request) -> Principal:
    return await request.app[GATEWAY].auth.authenticate(credential_from(request.headers))


def wants_async(request: web.Request) -> bool:
    v = request.headers.get("x-llm-async")            # on every live call: one lookup when absent
    return v is not None and v.strip().lower() in ("true", "1", "yes")


async def submit(request: web.Request, body: dict[str, Any], endpoint: str, webhook_param: str) -> web.Response:
    """Check the call as the live one would be, store it as a job, answer 202."""
    run = runner(request)
    gw = request.app[GATEWAY]
    key = await caller(request)
    call = chat_call(body, request.headers)
    call.endpoint, call.key = endpoint, key
    (validate_chat if endpoint == "chat.completions" else validate_embeddings)(call)
    gw.router.planner.plan(call)                     # 404 unknown model, 403 outside the key's scope
    opts = body.get("options")
    hook = opts.get("webhook_url") if isinstance(opts, dict) else None
    if hook is None and request.headers.get(WEBHOOK_HEADER):
        hook, webhook_param = request.headers[WEBHOOK_HEADER], WEBHOOK_HEADER
    if hook is not None:
        check_url(hook, gw.config.webhooks, webhook_param)
    body["stream"] = False                           # a job's result is the whole answer
    headers = {h: v for h in KEPT_HEADERS if (v := request.headers.get(h)) is not None}
    idem = request.headers.get("Idempotency-Key")
    digest = hashlib.sha256(orjson.dumps([endpoint, body], option=orjson.OPT_SORT_KEYS)).hexdigest()
    job = Job(id=f"job_{getrandbits(96):024x}", key_id=key.id, endpoint=endpoint, body=body, headers=headers,
              idem_key=idem or None, idem_hash=digest if idem else None, webhook_url=hook, created_at=time.time())
    stored = await store.insert(run.ledger, job)
    if stored.id != job.id and stored.idem_hash != digest:
        raise InvalidRequest("This Idempotency-Key was used with a different request.", status=409,
                             param="Idempotency-Key", code="idempotency_key_reused")
    run.poke()
    return _job_response(request, stored, 202)


def _job_response(request: web.Request, job: Job, status: int) -> web.Response:
    retry = str(request.app[GATEWAY].config.jobs.retry_after)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if job.status not in ENDED:
        headers["Retry-After"] = retry
    return web.json_response(job.public(), status=status, headers=headers, dumps=lambda o: orjson.dumps(o).decode())


async def _visible(request: web.Request) -> tuple[Runner, Job]:
    run = runner(request)
    key = await caller(request)
    job = await store.get(run.ledger, request.match_info["id"])
    if job is None or (not key.is_master and job.key_id != key.id) or (
            job.expires_at is not None and job.expires_at < time.time()):
        raise NotFound(f"No job with id '{request.match_info['id']}'.", param="id")
    return run, job


async def get_job(request: web.Request) -> web.Response:
    _, job = await _visible(request)
    return _job_response(request, job, 200 if job.status in ENDED else 202)


async def cancel_job(request: web.Request) -> web.Response:
    run, job = await _visible(request)
    if job.status not in ENDED:
        job = await store.cancel(run.ledger, job.id, run.cfg.result_ttl) or job
        run.cancel_job(job.id)
    return _job_response(request, job, 200)


async def failed_webhooks(request: web.Request) -> web.Response:
    run = runner(request)
    if not (await caller(request)).is_master:
        raise ProxyError("Only the master key may list failed webhooks.", status=403, type="permission_error",
                         code="permission_denied")
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise InvalidRequest("Invalid 'limit': expected an integer.", param="limit", code="invalid_type") from None
    rows = await store.failed_deliveries(run.ledger, limit)
    data = [{"id": d.id, "object": "webhook_delivery", "job_id": d.job_id, "url": d.url, "attempts": d.attempts,
             "last_error": d.last_error, "created_at": int(d.created_at), "failed_at": int(d.updated_at),
             "payload": orjson.loads(d.payload)} for d in rows]
    return web.json_response({"object": "list", "data": data}, dumps=lambda o: orjson.dumps(o).decode())


def setup(app: web.Application) -> None:
    """Routes, and the worker's start (after the ledger opens) and stop (before it closes)."""
    app.router.add_get("/v1/jobs/{id}", get_job)
    app.router.add_post("/v1/jobs/{id}/cancel", cancel_job)
    app.router.add_get("/admin/webhooks/failed", failed_webhooks)
    gw = app[GATEWAY]
    if gw.keys is None or not gw.config.jobs.enabled:
        return
    run = Runner(gw.config, gw, gw.keys.ledger)
    app[RUNNER] = run

    async def start(_app: web.Application) -> None:
        run.start()

    async def stop(_app: web.Application) -> None:
        await run.stop(min(5.0, gw.config.routing.drain_seconds))

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
