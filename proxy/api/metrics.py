"""GET /metrics: Prometheus text (or OpenMetrics, by Accept). Open to `telemetry.metrics.allow_from`
networks (loopback by default); from anywhere else it needs the master key or `telemetry.metrics.key`."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from proxy.api.parse import credential_from
from proxy.errors import Forbidden, NotFound, Unauthorized
from proxy.gateway import GATEWAY


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    tel = gw.telemetry
    if tel is None or tel.metrics is None:
        raise NotFound("Metrics are disabled (telemetry.metrics.enabled).")
    credential = credential_from(request.headers)
    if tel.may_scrape(request.remote, credential) is None:
        if not credential:
            raise Unauthorized("Metrics need the master key or the metrics key from this address.")
        principal = await gw.auth.authenticate(credential)
        if not getattr(principal, "is_master", False):
            raise Forbidden("Only the master key or the metrics key may read metrics.")
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(tel.metrics.registry), headers={"Content-Type": content_type})
