"""Writing a Reply over HTTP: JSON in one piece, or SSE relayed chunk by chunk as it arrives."""

from __future__ import annotations

import time

from aiohttp import web

from proxy.api.http import CORS_HEADERS
from proxy.context import ChatCall, Reply
from proxy.errors import ProxyError


def carry_headers(call: ChatCall, e: ProxyError) -> None:
    """The headers a stage asked every answer to carry (`call.error_headers`) go on an error too."""
    if call.error_headers:
        for k, v in call.error_headers.items():
            e.headers.setdefault(k, v)


SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def write_reply(request: web.Request, call: ChatCall, reply: Reply) -> web.StreamResponse:
    headers = {**reply.headers, **call.response_headers, "x-request-id": call.request_id,
               **request.get(CORS_HEADERS, {})}
    if reply.chunks is None:
        call.status = reply.status
        whole = web.Response(body=reply.body, status=reply.status, headers=headers, content_type=reply.content_type)
        # Sent here, not after the handler returns: the call's finalisers (accounting, metrics, logs,
        # spans) then run while the client already reads its answer, never in front of it.
        await whole.prepare(request)
        await whole.write_eof()
        return whole
    resp = web.StreamResponse(status=reply.status, headers={**headers, **SSE_HEADERS})
    call.status = reply.status
    chunks = reply.chunks
    try:
        await resp.prepare(request)
        async for data in chunks:
            if call.first_byte_at is None:
                call.first_byte_at = time.monotonic()
            await resp.write(data)
    except ProxyError as e:
        # The status line is gone already: the error becomes the stream's last event.
        call.error = e.message
        call.status = e.status
        await resp.write(e.sse())
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    await resp.write_eof()
    return resp
