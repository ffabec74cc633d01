"""GET /ui: the dashboard and playground, static files shipped in the package (proxy/ui/).

Read into memory at start-up (a few tens of KB), served with a strict Content-Security-Policy: the page
loads nothing from anywhere else and reaches only this gateway's REST API, with the key the user types.
"""

from __future__ import annotations

import mimetypes
from importlib import resources

from aiohttp import web

from proxy.errors import NotFound

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml",
         ".png": "image/png", ".txt": "text/plain"}


def _load() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    root = resources.files("proxy") / "ui"
    for entry in root.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            ext = "." + entry.name.rsplit(".", 1)[-1]
            ctype = TYPES.get(ext) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            files[entry.name] = (entry.read_bytes(), ctype)
    return files


def setup(app: web.Application) -> None:
    files = _load()

    async def serve(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        found = files.get(name)
        if found is None:
            raise NotFound(f"No UI file '{name}'.")
        body, ctype = found
        return web.Response(body=body, content_type=ctype, charset="utf-8" if ctype.startswith("text") else None,
                            headers={"content-security-policy": CSP, "cache-control": "no-cache",
                                     "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"})

    async def to_slash(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def favicon(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/favicon.svg")

    app.router.add_get("/ui", to_slash)
    app.router.add_get("/ui/", serve)
    app.router.add_get("/ui/{name}", serve)
    app.router.add_get("/favicon.ico", favicon)
