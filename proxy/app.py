"""build_app(config): wiring only. The whole stack is visible here, outermost first."""

from __future__ import annotations

from aiohttp import web

from proxy.api import chat, health, models
from proxy.api.http import cors, errors
from proxy.config import Config
from proxy.gateway import GATEWAY, Gateway
from proxy.pipeline import Stage, compose
from proxy.pipeline.auth import Authenticator, AuthStage
from proxy.pipeline.validate import ValidateStage
from proxy.routing.backends import build_backends
from proxy.routing.router import Router


def build_gateway(config: Config) -> Gateway:
    backends = build_backends(config)
    router = Router(config, backends)
    auth = Authenticator(config.server.master_key)
    stages: list[Stage] = [
        AuthStage(auth),
        ValidateStage(),
        # rate limit -> budget -> cache -> cost plug in here (their issues), all before the router
    ]
    return Gateway(config=config, backends=backends, router=router, auth=auth, pipeline=compose(stages, router))


def build_app(config: Config, gateway: Gateway | None = None) -> web.Application:
    gw = gateway or build_gateway(config)
    middlewares = [errors]
    if config.server.cors_origins:
        middlewares.append(cors(config.server.cors_origins))
    app = web.Application(middlewares=middlewares, client_max_size=config.server.max_body_bytes,
                          handler_args={"max_field_size": config.server.max_header_bytes})
    app[GATEWAY] = gw
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/chat/completions", chat.chat_completions)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{id:.+}", models.get_model)
    app.router.add_get("/health", health.health)
    app.router.add_get("/ready", health.ready)
    app.on_cleanup.append(_close_backends)
    return app


async def _close_backends(app: web.Application) -> None:
    for b in app[GATEWAY].backends.values():
        await b.transport.close()
