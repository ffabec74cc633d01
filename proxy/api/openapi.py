"""GET /openapi.json: the OpenAPI 3.1 document of every public route, kept in the repo
(proxy/data/openapi.json); tests/test_openapi.py holds it and the registered routes equal."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PATH = Path(__file__).resolve().parent.parent / "data" / "openapi.json"
DOCUMENT = web.AppKey("openapi_document", bytes)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json")


def setup(app: web.Application) -> None:
    app[DOCUMENT] = PATH.read_bytes()          # read once at start-up
    app.router.add_get("/openapi.json", openapi)
