"""GET /health (the process is alive) and GET /ready (config loaded, storage reachable, accepting)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.gateway import GATEWAY


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    checks: dict[str, bool] = {"config": True, "accepting": gw.accepting}
    names = list(gw.ready_checks)
    results = await asyncio.gather(*(asyncio.wait_for(gw.ready_checks[n](), 2.0) for n in names),
                                   return_exceptions=True)
    for n, r in zip(names, results, strict=True):
        checks[n] = r is True
    ok = all(checks.values())
    # Provider state is reported, not judged: one dead provider must not take every replica out.
    return web.json_response({"status": "ready" if ok else "not_ready", "checks": checks,
                              "providers": provider_summary(gw)}, status=200 if ok else 503)


def provider_summary(gw) -> dict[str, str]:
    snap = gw.router.health.snapshot()
    out = {name: "unknown" for name in gw.backends}
    for name, p in snap["providers"].items():
        out[name] = "healthy" if p["healthy"] else "unhealthy"
    for key, t in snap["targets"].items():
        if t["state"] != "closed":
            out[key] = t["state"]
    return out
