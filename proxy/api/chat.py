"""POST /v1/chat/completions: HTTP in, ChatCall through the pipeline, Reply out."""

from __future__ import annotations

from aiohttp import web

from proxy.api.http import REQUEST_ID
from proxy.api.parse import chat_call, decode_json
from proxy.api.respond import write_reply
from proxy.errors import ProxyError
from proxy.gateway import GATEWAY


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    call = chat_call(decode_json(await request.read()), request.headers)
    call.request_id = request.get(REQUEST_ID, call.request_id)
    try:
        reply = await gw.pipeline(call)
        return await write_reply(request, call, reply)
    except ProxyError as e:
        call.status, call.error = e.status, e.message
        raise
    finally:
        await gw.finish(call)
