"""build_app(config): wiring only. The whole stack is visible here, outermost first."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from proxy.api import (
    admin,
    admin_budgets,
    admin_cache,
    admin_providers,
    batches,
    chat,
    completions,
    envelope,
    files,
    health,
    jobs,
    messages,
    models,
    openapi,
    quota,
    responses,
    usage,
)
from proxy.api import graphql as graphql_api
from proxy.api import metrics as metrics_api
from proxy.api import ui as ui_api
from proxy.api.auth_throttle import AuthThrottle
from proxy.api.http import edge
from proxy.audit import denial_recorder
from proxy.config import Config
from proxy.cost.accounting import Accounting
from proxy.gateway import GATEWAY, Gateway
from proxy.ingress.responses_store import ResponsesStore
from proxy.keyservice import KeyStore
from proxy.pipeline import Check, Stage, compose
from proxy.pipeline.accounting import AccountingStage
from proxy.pipeline.auth import Authenticator, AuthStage
from proxy.pipeline.cache import CacheStage
from proxy.pipeline.ratelimit import LimitsCollector, RateLimitStage
from proxy.pipeline.validate import ValidateStage
from proxy.routing.backends import build_backends
from proxy.routing.health import probe_forever
from proxy.routing.router import Router
from proxy.telemetry import Telemetry


def build_gateway(config: Config, keys: KeyStore | None = None) -> Gateway:
    backends = build_backends(config)
    router = Router(config, backends)
    telemetry = Telemetry(config)           # traces, metrics, access log: all off-path when disabled
    router.attempt_scopes.append(telemetry.attempt_hook)
    telemetry.watch_router(router)
    auth = Authenticator(config.server.master_key, keys.lookup if keys is not None else None)
    cache = CacheStage(config, router.models)
    limits = RateLimitStage(config, router)   # in-process, or Redis when storage.redis is set
    stored = ResponsesStore(config, keys.ledger if keys is not None else None)   # previous_response_id
    acct = (Accounting(config, keys.ledger, router.models)
            if keys is not None and config.accounting.enabled else None)
    accounting = AccountingStage(acct) if acct is not None else None
    stages: list[Stage | Check] = [
        AuthStage(auth),        # checks (before the call only) run one after another in one frame
        ValidateStage(config.server.max_output_tokens, stored),   # other protocols become chat bodies here
        router.planner,         # resolve the model, check the key's scope, order the targets: once
        limits,                 # rate limits: every level in one atomic step; a cache hit still counts
        *([accounting] if accounting is not None else []),   # budget reserve; at the end price, record, settle
        cache,                  # response cache: rate limit and budget go above it
    ]
    pipeline = telemetry.wrap_pipeline(compose(stages, telemetry.wrap_router(router), telemetry.bind_stage,
                                               telemetry.bind_checks))
    gw = Gateway(config=config, backends=backends, router=router, auth=auth, pipeline=pipeline,
                 cache=cache, keys=keys, telemetry=telemetry, accounting=acct, accounting_stage=accounting,
                 limits=limits, responses=stored)
    if telemetry.metrics is not None:
        telemetry.metrics.registry.register(LimitsCollector(limits))
    gw.observers.append(telemetry.observe)
    return gw


def build_app(config: Config, gateway: Gateway | None = None) -> web.Application:
    gw = gateway or build_gateway(config, KeyStore(config))
    server = config.server
    # One middleware for everything HTTP: request id, CORS, the body's type and deadline, every error in
    # OpenAI's envelope (CORS headers included); 401/403 and throttled bad keys -> audit log (batched).
    throttle = AuthThrottle(server.auth_failures_per_minute)
    middlewares = [edge(cors_origins=server.cors_origins, body_timeout=server.body_timeout,
                        on_denied=denial_recorder(gw.keys.audit) if gw.keys is not None else None,
                        throttle=throttle)]
    # aiohttp closes a connection that has not sent a whole request within keepalive_timeout of opening
    # (or of its last answer): that is the header deadline, slow-header sockets included. After an
    # answer to a body never finished (408, 413) it reads what still comes for lingering_time, then closes.
    app = web.Application(middlewares=middlewares, client_max_size=server.max_body_bytes,
                          handler_args={"max_field_size": server.max_header_bytes,
                                        "keepalive_timeout": server.header_timeout,
                                        "lingering_time": min(10.0, server.body_timeout)})
    app[GATEWAY] = gw
    app.on_cleanup.append(_settle_ends)      # first: every call's end settles before anything closes
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/embeddings", chat.embeddings)
    app.router.add_post("/embeddings", chat.embeddings)
    app.router.add_post("/v1/requests", envelope.requests)              # the seed's request envelope
    messages.setup(app)                                       # /v1/messages, /v1/messages/count_tokens
    app.router.add_post("/v1/completions", completions.completions)
    responses.setup(app)                                      # /v1/responses (+ WebSocket mode), /{id}
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{id:.+}", models.get_model)
    app.router.add_get("/health", health.health)
    app.router.add_get("/ready", health.ready)
    app.router.add_get("/metrics", metrics_api.metrics)
    openapi.setup(app)                                        # GET /openapi.json (proxy/data/openapi.json)
    quota.setup(app)                                          # GET /v1/quota; opens/closes the limiter
    admin_cache.setup(app)
    admin_providers.setup(app)
    graphql_api.setup(app, config.graphql, throttle)          # /graphql; strawberry loads on first use
    if config.routing.health_check_interval > 0:
        app.on_startup.append(_start_probes)
        app.on_cleanup.append(_stop_probes)
    if gw.keys is not None:
        admin.setup(app, gw.keys)                             # /admin/keys, /admin/audit
        gw.ready_checks["storage"] = gw.keys.ledger.ping
        app.on_startup.append(_open_keys)
        jobs.setup(app)                                       # async jobs, batches: workers start after the
        files.setup(app)                                      # ledger opens and stop before the usage flush
        batches.setup(app)
        usage.setup(app)                                      # /v1/usage*, /admin/budgets; flushes before
        admin_budgets.setup(app)                              # the ledger closes (on_cleanup order)
        app.on_cleanup.append(_close_keys)
    if config.ui.enabled:
        ui_api.setup(app)                                       # /ui: dashboard and playground (static)
    app.on_startup.append(_start_telemetry)
    app.on_cleanup.append(_close_backends)
    app.on_cleanup.append(_close_telemetry)
    return app


PROBES = web.AppKey("probes", asyncio.Task)


async def _settle_ends(app: web.Application) -> None:
    await app[GATEWAY].settled()


async def _start_probes(app: web.Application) -> None:
    gw = app[GATEWAY]
    app[PROBES] = asyncio.create_task(
        probe_forever(gw.router.health, gw.backends, gw.config.routing.health_check_interval))


async def _stop_probes(app: web.Application) -> None:
    task = app[PROBES]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _start_telemetry(app: web.Application) -> None:
    tel = app[GATEWAY].telemetry
    if tel is not None:
        await tel.start()           # tracing on: starts the span exporter process


async def _close_telemetry(app: web.Application) -> None:
    tel = app[GATEWAY].telemetry
    if tel is not None:
        await tel.close()           # hands off the last spans; the exporter process exports them and exits


async def _close_backends(app: web.Application) -> None:
    for b in app[GATEWAY].backends.values():
        await b.transport.close()


async def _open_keys(app: web.Application) -> None:
    keys = app[GATEWAY].keys
    if keys is not None:
        await keys.start()          # connects the ledger and runs pending migrations


async def _close_keys(app: web.Application) -> None:
    keys = app[GATEWAY].keys
    if keys is not None:
        await keys.close()
