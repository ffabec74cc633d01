"""A fake OpenAI-compatible upstream with switchable faults. It records what it received."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import orjson
from aiohttp import web


class FakeOpenAI:
    """`mode` picks the behaviour of the next requests:
    ok | error500 | error400 | error401 | error403 | error429 | reset | reset_midstream | slow_first_byte |
    no_done | garbage | tools (calls the request's first tool with `tool_args`); by_prompt: each request's
    last message content names its mode."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.reply = "Hello from the fake upstream"
        self.delay = 0.0
        self.tool_args = '{"city": "Paris"}'
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/responses", self.responses)
        self.app.router.add_post("/v1/completions", self.completions)
        self.raw: list[bytes] = []          # /v1/responses bodies as they arrived
        self.streamed = b""                 # the last /v1/responses stream as it was sent
        self.cancelled = 0
        self.spaced = False            # stream events as `json.dumps` spaces them ("content": "tok"), as some servers do

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({"object": "list", "model": body["model"],
                                  "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                           for i, _ in enumerate(inputs)],
                                  "usage": {"prompt_tokens": 4 * len(inputs), "total_tokens": 4 * len(inputs)}})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        mode = self.mode
        if mode == "by_prompt":                  # the last message names the behaviour (churn tests)
            mode = str(body["messages"][-1].get("content") or "ok")
        if mode == "error500":
            return web.json_response({"error": {"message": "upstream exploded", "type": "server_error",
                                                "param": None, "code": None}}, status=500)
        if mode == "error400":
            return web.json_response({"error": {"message": "Invalid value for 'temperature'.",
                                                "type": "invalid_request_error", "param": "temperature",
                                                "code": "invalid_value"}}, status=400)
        if mode in ("error401", "error403"):        # OpenAI's own wording quotes the key's last characters
            return web.json_response({"error": {"message": "Incorrect API key provided: sk-upstr*******cret.",
                                                "type": "invalid_request_error", "param": None,
                                                "code": "invalid_api_key"}}, status=int(mode[-3:]))
        if mode == "context_length":
            return web.json_response({"error": {"message": "This model's maximum context length is 8000 tokens.",
                                                "type": "invalid_request_error", "param": "messages",
                                                "code": "context_length_exceeded"}}, status=400)
        if mode == "error429":
            return web.json_response({"error": {"message": "Rate limit reached", "type": "requests",
                                                "param": None, "code": "rate_limit_exceeded"}},
                                     status=429, headers={"retry-after": "1"})
        if mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if mode == "garbage":
            return web.Response(body=b"<html>oops</html>", status=200, content_type="text/html")
        if mode == "slow_first_byte":
            try:
                await asyncio.sleep(self.delay or 5)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        words = self.reply.split(" ")
        usage = {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)}
        created = int(time.time())
        if mode == "tools":
            return await self._tool_call(request, body, usage, created)
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "system_fingerprint": "fp_fake"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        dumps = (lambda o: json.dumps(o).encode()) if self.spaced else orjson.dumps

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            return b"data: " + dumps({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"

        try:
            await resp.write(b": keep-alive\n\n")
            await resp.write(chunk({"role": "assistant", "content": ""}))
            for i, w in enumerate(words):
                if mode == "reset_midstream" and i == len(words) // 2:
                    await asyncio.sleep(0.05)
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                await resp.write(chunk({"content": ("" if i == 0 else " ") + w}))
                if self.delay and mode != "slow_first_byte":
                    await asyncio.sleep(self.delay)
            await resp.write(chunk({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(b"data: " + orjson.dumps({
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                    "model": body["model"], "choices": [], "usage": usage}) + b"\n\n")
            if mode != "no_done":
                await resp.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return resp

    async def _tool_call(self, request: web.Request, body: dict, usage: dict, created: int) -> web.StreamResponse:
        name = body["tools"][0]["function"]["name"]
        call = {"id": "call_fake1", "type": "function", "function": {"name": name, "arguments": self.tool_args}}
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                             "logprobs": None, "finish_reason": "tool_calls"}], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": body["model"]}
        args = self.tool_args
        deltas = [{"role": "assistant", "content": None,
                   "tool_calls": [{"index": 0, **call, "function": {"name": name, "arguments": ""}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": args[:6]}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": args[6:]}}]}]
        for d in deltas:
            await resp.write(b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": d,
                                                                            "finish_reason": None}]}) + b"\n\n")
        await resp.write(b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {},
                                                                        "finish_reason": "tool_calls"}]}) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API (for pass-through): an answer of `reply`, JSON or its SSE events."""
        self.raw.append(await request.read())
        body = orjson.loads(self.raw[-1])
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.mode == "error400":
            return web.json_response({"error": {"message": "Previous response with id 'x' not found.",
                                                "type": "invalid_request_error", "param": "previous_response_id",
                                                "code": "previous_response_not_found"}}, status=400)
        usage = {"input_tokens": 13, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 5,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 18}
        item = {"id": "msg_up1", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": self.reply, "annotations": []}]}
        resp = {"id": "resp_upstream1", "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": body["model"], "output": [item], "parallel_tool_calls": True, "tool_choice": "auto",
                "tools": [], "usage": usage, "previous_response_id": body.get("previous_response_id")}
        if not body.get("stream"):
            return web.json_response(resp)
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        self.streamed = b""
        events = [("response.created", {"response": {**resp, "status": "in_progress", "output": [], "usage": None}}),
                  ("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
                  *[("response.output_text.delta", {"item_id": "msg_up1", "output_index": 0, "content_index": 0,
                                                    "delta": w, "logprobs": []}) for w in self.reply.split(" ")],
                  ("response.completed", {"response": resp})]
        for seq, (kind, fields) in enumerate(events):
            if self.mode == "reset_midstream" and kind == "response.completed":
                assert request.transport is not None
                request.transport.abort()
                return out
            data = b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(
                {"type": kind, "sequence_number": seq, **fields}) + b"\n\n"
            self.streamed += data
            await out.write(data)
        return out

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """Legacy text completions: `reply`, whole or streamed word by word (honours delay, reset_midstream)."""
        body = await request.json()
        self.requests.append(body)
        words = self.reply.split(" ")
        usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
        head = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**head, "choices": [{"index": 0, "text": self.reply, "logprobs": None,
                                                           "finish_reason": "stop"}], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i, w in enumerate(words):
                if self.mode == "reset_midstream" and i == len(words) // 2:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                choice = {"index": 0, "text": ("" if i == 0 else " ") + w, "logprobs": None,
                          "finish_reason": "stop" if i == len(words) - 1 else None}
                await resp.write(b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n")
                if self.delay:
                    await asyncio.sleep(self.delay)
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return resp
