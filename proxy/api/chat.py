"""POST /v1/chat/completions and /v1/embeddings: HTTP in, ChatCall through the pipeline, Reply out."""

from __future__ import annotations

from aiohttp import web

from proxy.api import jobs
from proxy.api.http import REQUEST_ID
from proxy.api.parse import chat_call, decode_json
from proxy.api.respond import serve_call
from proxy.errors import Unavailable
from proxy.gateway import GATEWAY


async def _serve(request: web.Request, endpoint: str) -> web.StreamResponse:
    if not request.app[GATEWAY].accepting:
        raise Unavailable("The server is shutting down; retry on another replica.",
                          headers={"Connection": "close", "Retry-After": "1"})
    body = decode_json(await request.read())
    if jobs.wants_async(request):                    # x-llm-async: true -> 202 and a job (proxy/api/jobs.py)
        return await jobs.submit(request, body, endpoint, "options.webhook_url")
    call = chat_call(body, request.headers, request_id=request.get(REQUEST_ID))
    call.endpoint = endpoint
    return await serve_call(request, call)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "chat.completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "embeddings")
