"""The stack's own limit: the barest aiohttp relay. `python -m bench.bare_relay PORT UPSTREAM_URL [POOL]`
(POOL: pooled upstream connections, default 256; the stream-scale scenario gives it the proxy's pool)."""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web


def main() -> None:
    import uvloop
    port, upstream = int(sys.argv[1]), sys.argv[2]
    pool = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    session: aiohttp.ClientSession | None = None

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal session
        session = session or aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool))
        async with session.post(upstream, data=await request.read(),
                                headers={"Content-Type": "application/json"}) as r:
            if r.content_type != "text/event-stream":
                return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for data in r.content.iter_any():
                await resp.write(data)
            return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)   # as serve


if __name__ == "__main__":
    main()
