"""GET /admin/providers: breaker state, in-flight, latency and health of every provider and target."""

from __future__ import annotations

from aiohttp import web

from proxy.api.guard import require_master
from proxy.gateway import GATEWAY


async def providers(request: web.Request) -> web.Response:
    await require_master(request)
    gw = request.app[GATEWAY]
    snap = gw.router.health.snapshot()
    data = []
    for name, b in gw.backends.items():
        prov = snap["providers"].get(name)
        data.append({
            "name": name, "type": b.config.type,
            "health": None if prov is None else prov,
            "targets": {k: v for k, v in snap["targets"].items() if k.startswith(name + "/")},
        })
    return web.json_response({"object": "list", "data": data, "accepting": gw.accepting,
                              "inflight": gw.inflight})


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/providers", providers)
