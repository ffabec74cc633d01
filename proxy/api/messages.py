"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API in front of every target.

To an Anthropic target the client's body goes through with only `model` replaced and the stream is relayed
byte for byte (the provider adapter passes `call.raw_body`); to any other target the body is converted to
chat completions in the validate stage (proxy/ingress/messages_request.py) and the answer back here.
Errors are in Anthropic's envelope: `setup` registers both routes with `anthropic_route`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.api.http import REQUEST_ID, anthropic_route
from proxy.api.parse import chat_call, decode_json
from proxy.api.respond import failed, serve_call
from proxy.context import ChatCall, Reply
from proxy.cost.tokens import Tokenizer
from proxy.errors import ProxyError
from proxy.gateway import GATEWAY
from proxy.ingress.messages_reply import MessagesStream, estimate_input, message_body, render_stream
from proxy.ingress.messages_request import validate_messages


def _render(call: ChatCall, reply: Reply) -> Reply:
    def fail(e: ProxyError) -> None:
        failed(call, e)

    if reply.chunks is not None:
        stream = None if reply.native else MessagesStream(call.model, estimate_input(call.body))
        reply.chunks = render_stream(reply.chunks, stream, fail)
        return reply
    if not reply.native and reply.body is not None and reply.status == 200:
        reply.body = message_body(reply.body, call.model)
    return reply


async def messages(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    call = chat_call(decode_json(raw), request.headers, request_id=request.get(REQUEST_ID))
    call.endpoint, call.raw_body = "messages", raw
    return await serve_call(request, call, render=_render)


async def count_tokens(request: web.Request) -> web.Response:
    """Counted here (the tokenizer of the target's family when known, else chars/4): no model is called,
    so no usage event; the key and its model scope are checked as for a call."""
    gw = request.app[GATEWAY]
    body = decode_json(await request.read())
    body.setdefault("max_tokens", 1)
    call = chat_call(body, request.headers, request_id=request.get(REQUEST_ID))
    call.key = await gw.auth.authenticate(call.credential)
    validate_messages(call)
    plan = gw.router.planner.plan(call)
    model = plan.targets[0].model if plan.targets else call.model
    tok = gw.accounting.tokenizer if gw.accounting is not None else Tokenizer(heuristic=True)
    n = await asyncio.to_thread(tok.count_prompt, model, call.body, "messages")   # a table may load
    return web.json_response({"input_tokens": n}, headers={"x-request-id": call.request_id})


async def not_allowed(request: web.Request) -> web.Response:
    """Any other method on an Anthropic route: 405, in Anthropic's envelope too (aiohttp's own 405 is
    matched to no route, so the middleware could not tell)."""
    raise ProxyError(f"Method {request.method} is not allowed on {request.path}.", status=405,
                     type="invalid_request_error", code="method_not_allowed", headers={"Allow": "POST"})


def setup(app: web.Application) -> None:
    for path, handler in (("/v1/messages", messages), ("/v1/messages/count_tokens", count_tokens)):
        resource = app.router.add_post(path, handler).resource
        app.router.add_route("*", path, not_allowed)              # the same resource
        assert resource is not None
        anthropic_route(app, resource)
