"""bench/wrk.py: the tracing bench's load generator sends the real request and counts what failed."""

from __future__ import annotations

import json
import shutil

import pytest
from aiohttp import web

from bench.wrk import _lua, run_wrk

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "a \\"quoted\\" line\\nand more"}]}'
HEADERS = {"Authorization": "Bearer sk-x", "Content-Type": "application/json"}


def test_the_script_quotes_body_and_headers_as_lua_strings():
    script = _lua(BODY, HEADERS)
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Authorization"] = "Bearer sk-x"' in script
    body_line = next(line for line in script.splitlines() if line.startswith("wrk.body = "))
    assert json.loads(body_line.removeprefix("wrk.body = ")).encode() == BODY      # one line, escaped


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian: apt-get install wrk)")
async def test_wrk_sends_the_request_and_counts_failed_answers(aiohttp_server):
    seen: list[tuple[bytes, str | None]] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append((await request.read(), request.headers.get("Authorization")))
        return web.json_response({"ok": True})

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": {}}, status=429)

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/refuse", refuse)
    server = await aiohttp_server(app)
    good = await run_wrk(str(server.make_url("/ok")), BODY, HEADERS, 2, 1)
    assert good.requests > 10 and good.errors == 0 and good.rps > 0
    assert set(seen) == {(BODY, "Bearer sk-x")}
    bad = await run_wrk(str(server.make_url("/refuse")), BODY, HEADERS, 2, 1)
    assert bad.requests > 10 and bad.errors == bad.requests and bad.rps == 0
