"""The Responses API: POST /v1/responses (JSON or SSE), GET / DELETE /v1/responses/{id}, and WebSocket mode
on GET /v1/responses (OpenAI's: `response.create` client events in, the SSE stream's events out as text
frames, one response in flight per socket).

To an OpenAI-type target whose upstream serves /v1/responses (`responses: true`) the body goes through
with only `model` replaced and the stream is relayed byte for byte; to any other target it is converted to
chat completions in the validate stage and the answer back here (proxy/ingress/responses_codec.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from proxy.api.http import REQUEST_ID, new_request_id
from proxy.api.parse import chat_call, credential_from, decode_json
from proxy.api.respond import failed, serve_call
from proxy.context import CLIENT_CLOSED, DRAIN, ChatCall, Principal
from proxy.errors import InvalidRequest, NotFound, ProxyError, ShuttingDown
from proxy.gateway import GATEWAY, Gateway
from proxy.ingress.responses_codec import ResponsesCodec
from proxy.pipeline.validate import tenant
from proxy.streaming.sse import SSEDecoder

log = logging.getLogger("proxy.responses")


def _codec(gw: Gateway, call: ChatCall, req: dict[str, Any]) -> ResponsesCodec:
    def fail(e: ProxyError) -> None:
        failed(call, e)
    return ResponsesCodec(req, gw.responses, lambda: tenant(call), fail)


async def create(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    raw = await request.read()
    req = decode_json(raw)
    call = chat_call(req, request.headers, request_id=request.get(REQUEST_ID))
    call.endpoint, call.raw_body = "responses", raw
    return await serve_call(request, call, render=_codec(gw, call, req).render)


async def _stored(request: web.Request) -> tuple[Gateway, str, str]:
    gw = request.app[GATEWAY]
    key = await gw.auth.authenticate(credential_from(request.headers))
    return gw, key.id, request.match_info["id"]


def _not_found(rid: str) -> NotFound:
    return NotFound(f"Response with id '{rid}' not found.", param="response_id")


async def retrieve(request: web.Request) -> web.Response:
    gw, who, rid = await _stored(request)
    stored = await gw.responses.get(who, rid) if gw.responses is not None else None
    if stored is None or stored.response is None:
        raise _not_found(rid)
    return web.Response(body=orjson.dumps(stored.response), content_type="application/json")


async def delete(request: web.Request) -> web.Response:
    gw, who, rid = await _stored(request)
    if gw.responses is None or not await gw.responses.delete(who, rid):
        raise _not_found(rid)
    return web.Response(body=orjson.dumps({"id": rid, "object": "response", "deleted": True}),
                        content_type="application/json")


async def get_or_connect(request: web.Request) -> web.StreamResponse:
    """GET /v1/responses: WebSocket mode for an upgrade request; anything else is not a route."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise web.HTTPMethodNotAllowed("GET", ["POST"])
    return await _websocket(request)


def _error_event(e: ProxyError) -> dict[str, Any]:
    return {"type": "error", "status": e.status,
            "error": {"type": e.type, "code": e.code, "message": e.message, "param": e.param}}


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    gw = request.app[GATEWAY]
    cfg = gw.config.responses
    headers = request.headers
    key = await gw.auth.authenticate(credential_from(headers))   # refused before the upgrade: 401 in JSON
    ws = web.WebSocketResponse(heartbeat=cfg.websocket_heartbeat, max_msg_size=gw.config.server.max_body_bytes)
    await ws.prepare(request)
    loop = asyncio.get_running_loop()
    closes_at = loop.time() + cfg.websocket_max
    turn: asyncio.Task | None = None
    try:
        while True:
            left = closes_at - loop.time()
            if left <= 0:
                break
            try:
                msg = await ws.receive(timeout=min(cfg.websocket_idle, left))
            except TimeoutError:
                if turn is not None and not turn.done():
                    continue                   # a long answer is not idleness
                break
            if msg.type != WSMsgType.TEXT:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                await ws.send_json(_error_event(InvalidRequest("Send client events as JSON text frames.")))
                continue
            try:
                event = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                event = None
            if not isinstance(event, dict) or event.get("type") != "response.create":
                await ws.send_json(_error_event(InvalidRequest(
                    "Expected a 'response.create' event.", param="type", code="invalid_event")))
                continue
            if turn is not None and not turn.done():
                await ws.send_json(_error_event(InvalidRequest(
                    "A response is already in progress on this connection; wait for its terminal event.",
                    code="response_in_progress")))
                continue
            body = {k: v for k, v in event.items() if k != "type"}
            body["stream"] = True
            turn = asyncio.create_task(_turn(gw, ws, headers, key, body))
    finally:
        if turn is not None and not turn.done():
            turn.cancel()                      # the client left (or the socket timed out): stop the upstream
            with contextlib.suppress(asyncio.CancelledError):
                await turn
        await ws.close()
    return ws


async def _turn(gw: Gateway, ws: web.WebSocketResponse, headers: Any, key: Principal,
                body: dict[str, Any]) -> None:
    """One `response.create`: the whole pipeline (limits and budget included), its events as text frames,
    and the call's end exactly once."""
    call = chat_call(body, headers, ingress="websocket", request_id=new_request_id())
    call.endpoint, call.raw_body = "responses", orjson.dumps(body)
    codec = _codec(gw, call, body)
    chunks = None
    try:
        gw.begin(call)
    except ProxyError as e:                    # shutting down: nothing was begun, nothing to end
        await ws.send_json(_error_event(e))
        return
    try:
        reply = codec.render(call, await gw.pipeline(call))
        call.status = reply.status
        chunks = reply.chunks
        if chunks is None:                     # a cache or provider answered whole: send it as one event
            await ws.send_str('{"type":"response.completed","response":' + (reply.body or b"{}").decode() + "}")
            return
        decoder = SSEDecoder()
        async for data in chunks:
            if call.first_byte_at is None:
                call.first_byte_at = time.monotonic()
            for ev in decoder.feed(data):
                await ws.send_str(ev.data)
    except ProxyError as e:
        failed(call, e)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json(_error_event(e))
    except asyncio.CancelledError:
        if call.ended_by != DRAIN:
            call.status = CLIENT_CLOSED
            raise
        task = asyncio.current_task()            # the drain deadline: tell the client, then end
        if task is not None:
            task.uncancel()
        down = ShuttingDown("The server is shutting down; the response was ended by the drain deadline.")
        failed(call, down)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json(_error_event(down))
    except (ConnectionError, RuntimeError):
        call.status = CLIENT_CLOSED            # the socket closed under a send
    except Exception:
        log.exception("websocket turn %s failed", call.request_id)
        call.status, call.error = 500, "internal error"
    finally:
        if chunks is not None:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        gw.end(call)


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses", get_or_connect)
    app.router.add_get("/v1/responses/{id}", retrieve)
    app.router.add_delete("/v1/responses/{id}", delete)
    app.on_cleanup.append(_close)


async def _close(app: web.Application) -> None:
    store = app[GATEWAY].responses
    if store is not None:
        await store.close()
