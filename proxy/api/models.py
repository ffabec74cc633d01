"""GET /v1/models and /v1/models/{id}: the configured model names, in OpenAI's list format."""

from __future__ import annotations

import time

from aiohttp import web

from proxy.api.parse import credential_from
from proxy.errors import ModelNotFound
from proxy.gateway import GATEWAY
from proxy.routing.plan import may_use

_CREATED = int(time.time())


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "llm-service"}


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = await gw.auth.authenticate(credential_from(request.headers))
    models = gw.router.models
    data = [_model(name) for name in models if may_use(key, name, models.resolve(name))]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = await gw.auth.authenticate(credential_from(request.headers))
    name = request.match_info["id"]
    if name not in gw.router.models or not may_use(key, name, gw.router.models.resolve(name)):
        raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")
    return web.json_response(_model(name))
