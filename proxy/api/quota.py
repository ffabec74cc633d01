"""GET /v1/quota: a key's own limits and what is left of them (key, source, global; `?model=` adds the
model's and its provider's levels). Reading takes nothing. Also opens and closes the limiter's store."""

from __future__ import annotations

from aiohttp import web

from proxy.api.parse import credential_from
from proxy.gateway import GATEWAY
from proxy.limits import LevelState, format_reset


def _level(st: LevelState) -> dict:
    lv = st.level
    kind, _, name = lv.name.partition(":")
    out: dict = {"level": kind, "name": name or kind, "rpm": lv.rpm or None, "tpm": lv.tpm or None,
                 "max_concurrency": lv.concurrency or None, "priority_reserve": lv.reserve,
                 "failure": "fail_closed" if lv.fail_closed else "fail_open"}
    if lv.rpm:
        out.update(remaining_requests=st.remaining_requests, reset_requests=format_reset(st.reset_requests))
    if lv.tpm:
        out.update(remaining_tokens=st.remaining_tokens, reset_tokens=format_reset(st.reset_tokens))
    if lv.concurrency:
        out["inflight"] = max(0, st.inflight)
    return out


async def get_quota(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = await gw.auth.authenticate(credential_from(request.headers))
    body: dict = {"object": "quota", "key_id": key.id, "limits": []}
    if gw.limits is not None and gw.config.limits.enabled:
        states = await gw.limits.quota(key, request.query.get("model"))
        body["limits"] = [_level(s) for s in states]
    return web.json_response(body)


async def _open(app: web.Application) -> None:
    limits = app[GATEWAY].limits
    if limits is not None:
        await limits.start()


async def _close(app: web.Application) -> None:
    limits = app[GATEWAY].limits
    if limits is not None:
        await limits.close()


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/quota", get_quota)
    app.on_startup.append(_open)
    app.on_cleanup.append(_close)
