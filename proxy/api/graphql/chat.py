"""chatCompletion (mutation) and chatCompletionStream (subscription): a ChatInput becomes the OpenAI chat
body REST receives, and the call runs through the same pipeline and ends exactly once (proxy/gateway.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from proxy.api.graphql import types as t
from proxy.api.graphql.auth import Context, GQLError, from_envelope, from_proxy
from proxy.api.graphql.inputs import ChatInput, chat_body
from proxy.context import CLIENT_CLOSED, DRAIN, ChatCall, Usage, usage_from_openai
from proxy.cost.prices import usd
from proxy.errors import ProxyError, ShuttingDown
from proxy.streaming.sse import SSEDecoder

INGRESS = "graphql"


def new_call(ctx: Context, inp: ChatInput, *, stream: bool) -> ChatCall:
    body = chat_body(inp, stream=stream)
    rid = ctx.take_request_id()
    call = ChatCall(body=body, model=inp.model, stream=stream, credential=ctx.credential, ingress=INGRESS,
                    headers=ctx.headers)
    if rid:
        call.request_id = rid                    # the HTTP request's id, for its first call
    call.endpoint = "chat.completions"
    return call


def _drained(call: ChatCall) -> GQLError:
    """The drain deadline cancelled the call: tell the client instead of vanishing (as respond.py does)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    down = ShuttingDown("The server is shutting down; the call was ended by the drain deadline.")
    call.status, call.error, call.error_code = down.status, down.message, down.code
    return from_proxy(down)


def _usage(u: Usage | None) -> t.Usage | None:
    if u is None:
        return None
    return t.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                   total_tokens=u.total_tokens or u.prompt_tokens + u.completion_tokens, cached_tokens=u.cached_tokens)


def _function(f: Any) -> t.FunctionCall | None:
    if not isinstance(f, dict):
        return None
    return t.FunctionCall(name=f.get("name"), arguments=f.get("arguments"))


def _refused(status: int, body: bytes) -> GQLError:
    """The pipeline's OpenAI error envelope as a coded GraphQL error (nothing else of it is shown)."""
    try:
        err = orjson.loads(body).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {}
    return from_envelope(status, str(err.get("message") or "The request failed."), err.get("type"),
                         err.get("param"), err.get("code"))


async def chat_completion(ctx: Context, inp: ChatInput) -> t.ChatCompletion:
    await ctx.principal()                    # a bad key: throttled and audited as on every GraphQL field
    call = new_call(ctx, inp, stream=False)
    try:
        status, body = await ctx.gw.call_whole(call)     # begin, pipeline, end: one usage event
    except ProxyError as e:                              # refused before it began (shutting down)
        raise from_proxy(e) from None
    except asyncio.CancelledError:
        if call.ended_by != DRAIN:
            raise
        raise _drained(call) from None
    if status >= 400:
        raise _refused(status, body)
    doc = orjson.loads(body)
    choice = (doc.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    tools = msg.get("tool_calls")
    return t.ChatCompletion(
        id=doc.get("id"), request_id=call.request_id, model=doc.get("model"), content=msg.get("content"),
        tool_calls=[t.ToolCall(id=c.get("id"), type=c.get("type"), function=_function(c.get("function")))
                    for c in tools if isinstance(c, dict)] if isinstance(tools, list) else None,
        finish_reason=choice.get("finish_reason"),
        usage=_usage(call.usage or usage_from_openai(doc.get("usage"))),
        cost_usd=usd(call.cost_nanos) if call.cost_nanos is not None else None, cached=call.cache == "hit")


def _chunk(doc: dict[str, Any], request_id: str) -> t.ChatChunk:
    choices = doc.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    delta = choice.get("delta") or {}
    calls = delta.get("tool_calls")
    u = usage_from_openai(doc.get("usage"))
    return t.ChatChunk(
        id=doc.get("id"), request_id=request_id, model=doc.get("model"), delta=delta.get("content"),
        tool_call_deltas=[t.ToolCallDelta(index=int(c.get("index") or 0), id=c.get("id"), type=c.get("type"),
                                          function=_function(c.get("function")))
                          for c in calls if isinstance(c, dict)] if isinstance(calls, list) else None,
        finish_reason=choice.get("finish_reason"), usage=_usage(u))


def _whole_as_chunk(body: bytes, request_id: str) -> t.ChatChunk:
    doc = orjson.loads(body)
    choice = (doc.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    return t.ChatChunk(id=doc.get("id"), request_id=request_id, model=doc.get("model"), delta=msg.get("content"),
                       tool_call_deltas=None, finish_reason=choice.get("finish_reason"),
                       usage=_usage(usage_from_openai(doc.get("usage"))))


async def chat_stream(ctx: Context, inp: ChatInput) -> AsyncGenerator[t.ChatChunk, None]:
    """The OpenAI SSE stream the pipeline answers, one ChatChunk per event. However the subscription ends
    (done, upstream error, `complete` from the client, socket closed) the call ends once, in `finally`."""
    gw = ctx.gw
    await ctx.principal()
    call = new_call(ctx, inp, stream=True)
    try:
        gw.begin(call)
    except ProxyError as e:
        raise from_proxy(e) from None
    chunks = None
    try:
        reply = await gw.pipeline(call)
        call.status = reply.status
        if reply.chunks is None:
            if reply.status >= 400:
                raise _refused(reply.status, reply.body or b"")
            yield _whole_as_chunk(reply.body or b"{}", call.request_id)
            return
        chunks = reply.chunks
        dec = SSEDecoder()
        rid = call.request_id
        async for data in chunks:
            if call.first_byte_at is None:
                call.first_byte_at = time.monotonic()
            for ev in dec.feed(data):
                if ev.data == "[DONE]":
                    continue
                doc = orjson.loads(ev.data)
                if "error" in doc or ev.event == "error":   # an in-band error the relay passed on
                    err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
                    call.error = call.error or str(err.get("message") or "upstream stream error")
                    raise from_envelope(502, str(err.get("message") or "The upstream stream failed."),
                                        err.get("type"), err.get("param"), err.get("code"))
                yield _chunk(doc, rid)
    except ProxyError as e:
        call.status, call.error, call.error_code = e.status, e.message, e.code
        raise from_proxy(e) from None
    except asyncio.CancelledError:
        if call.ended_by != DRAIN:
            call.status = CLIENT_CLOSED                  # the client completed the operation or left
            raise
        raise _drained(call) from None
    except GeneratorExit:
        call.status = CLIENT_CLOSED
        raise
    except GQLError:
        raise
    except Exception:
        call.status, call.error = 500, "internal error"
        raise
    finally:
        try:
            if chunks is not None and (aclose := getattr(chunks, "aclose", None)) is not None:
                await aclose()                           # cancels the upstream request
        finally:
            gw.end(call)
