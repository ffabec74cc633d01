"""GET /openapi.json: a valid OpenAPI 3.1 document whose operations are exactly the registered routes."""

from __future__ import annotations

import aiohttp
from openapi_spec_validator import validate

from proxy.app import build_app
from tests.conftest import make_config

METHODS = {"get", "post", "put", "patch", "delete"}


def _registered() -> set[tuple[str, str]]:
    app = build_app(make_config())
    out = set()
    for r in app.router.routes():
        if r.method in ("HEAD", "*") or r.resource is None:      # "*": a route's 405 in its own envelope
            continue
        info = r.resource.get_info()
        out.add((r.method.lower(), info.get("path") or info["formatter"]))
    return out


async def test_document_is_served_valid_and_matches_the_routes(start_proxy):
    server = await start_proxy(make_config())
    async with aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/openapi.json")) as r:
            assert r.status == 200
            doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops if m in METHODS}
    registered = _registered()
    assert documented - registered == set(), "documented but not served"
    assert registered - documented == set(), "served but not documented"
