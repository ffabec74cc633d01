"""A fault-injecting OpenAI-compatible upstream for the hardening tests: it echoes the key it was sent
(as vLLM and many OpenAI-compatible servers do), sends bodies and stream lines of any size without holding
them in memory, fails every request with 503, or holds each request open. It counts what it received."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

CHUNK = 1024 * 1024


def completion(model: str, text: str = "ok") -> dict[str, Any]:
    return {"id": "chatcmpl-hostile", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1,
                                     "model": model, "choices": [{"index": 0, "delta": delta,
                                                                  "finish_reason": finish}]}) + b"\n\n"


class HostileUpstream:
    """`mode`: ok | echo_key (HTTP `status` with the received key in the message) | echo_key_stream (an
    in-band error event with the key, then the stream ends without [DONE]) | big (a `size`-byte body;
    `with_length` sends Content-Length) | big_line (a stream whose second line is `size` bytes) |
    always503 | slow (each request held `delay` seconds, then ok)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.status = 400
        self.size = 0
        self.with_length = False
        self.delay = 0.0
        self.attempts = 0
        self.open_now = 0
        self.most_open = 0
        self.sent = 0                     # bytes of a big body actually written before the reader left
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            return await self._answer(request)
        finally:
            self.open_now -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "m")
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "echo_key":
            msg = (f"Incorrect API key provided: {key}. Tried {request.url.with_query(key=key)} "
                   f"and api_key={key}; header was Authorization: Bearer {key}")
            return web.json_response({"error": {"message": msg, "type": "invalid_request_error", "param": None,
                                                "code": "bad_key"}}, status=self.status)
        if self.mode == "always503":
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503)
        if self.mode == "big":
            return await self._big(request)
        if not body.get("stream"):
            return web.json_response(completion(model))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk(model, {"role": "assistant", "content": "hi"}))
        if self.mode == "echo_key_stream":
            await resp.write(b"data: " + orjson.dumps({"error": {"message": f"key {key} was revoked",
                                                                 "type": "server_error"}}) + b"\n\n")
            return resp
        if self.mode == "big_line":
            await asyncio.sleep(0.05)                   # the stream is handed out before the big line
            await self._write_big(resp, b"data: ")
            return resp
        await resp.write(chunk(model, {}, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _big(self, request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "application/json"}
        resp = web.StreamResponse(headers=headers)
        if self.with_length:
            resp.content_length = self.size
        await resp.prepare(request)
        await self._write_big(resp, b'{"x": "')
        return resp

    async def _write_big(self, resp: web.StreamResponse, head: bytes) -> None:
        block = b"x" * CHUNK
        try:
            await resp.write(head)
            left = self.size - len(head)
            while left > 0:
                part = block if left >= CHUNK else block[:left]
                await resp.write(part)
                self.sent += len(part)
                left -= len(part)
        except (ConnectionError, asyncio.CancelledError):
            pass
