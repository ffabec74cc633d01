"""POST /v1/completions: legacy text completions, passed through to OpenAI-type targets (a target whose
provider has no such endpoint is skipped by the router, with a 400 if none is left)."""

from __future__ import annotations

from aiohttp import web

from proxy.api.http import REQUEST_ID
from proxy.api.parse import chat_call, decode_json
from proxy.api.respond import serve_call


async def completions(request: web.Request) -> web.StreamResponse:
    call = chat_call(decode_json(await request.read()), request.headers, request_id=request.get(REQUEST_ID))
    call.endpoint = "completions"
    return await serve_call(request, call)
