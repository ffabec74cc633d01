"""A fake OpenRouter: `/api/v1/models` (counted) and `/api/v1/chat/completions` in OpenRouter's wire format.

Streams open with `: OPENROUTER PROCESSING` comments, end with a usage chunk (`choices: []`, usage always
included, cache details inside `prompt_tokens_details`) and `[DONE]`; `mode = "midstream_error"` ends a
stream with OpenRouter's in-band error event instead.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "cost": 0.00042, "is_byok": False,
         "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 2, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0}}

MIDSTREAM_ERROR = {"code": 502, "message": "Provider disconnected unexpectedly",
                   "metadata": {"error_type": "provider_unavailable"}}


class FakeOpenRouter:
    """`mode`: ok | midstream_error | error (answers `error_status` with `error_body`).
    `models_mode`: ok | down (500) | slow (sleeps `models_delay` before answering)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.models_mode = "ok"
        self.models_delay = 0.05
        self.models_fetches = 0
        self.supported: dict[str, list[str]] = {
            "meta-llama/llama-3.1-8b-instruct": ["max_tokens", "temperature", "top_p", "stop", "seed",
                                                 "top_k", "repetition_penalty"],
            "openai/gpt-4o-mini": ["max_tokens", "temperature", "top_p", "stop", "seed", "tools", "tool_choice",
                                   "response_format", "structured_outputs", "logprobs", "top_logprobs",
                                   "frequency_penalty", "presence_penalty", "logit_bias"],
        }
        self.error_status = 429
        self.error_body: dict[str, Any] = {"error": {"code": 429, "message": "Rate limit exceeded",
                                                     "metadata": {"error_type": "rate_limit_exceeded"}}}
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.models_headers: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/api/v1/models", self.models)
        self.app.router.add_post("/api/v1/chat/completions", self.chat)
        self.server: Any = None

    async def models(self, request: web.Request) -> web.Response:
        self.models_fetches += 1
        self.models_headers.append(dict(request.headers))
        if self.models_mode == "down":
            return web.json_response({"error": {"code": 500, "message": "Internal Server Error"}}, status=500)
        await asyncio.sleep(self.models_delay if self.models_mode != "slow" else 10)
        return web.json_response({"data": [
            {"id": mid, "canonical_slug": mid, "name": mid, "created": 1700000000, "context_length": 131072,
             "architecture": {"modality": "text->text", "input_modalities": ["text"],
                              "output_modalities": ["text"], "tokenizer": "Other"},
             "pricing": {"prompt": "0.0000001", "completion": "0.0000002"},
             "top_provider": {"context_length": 131072, "max_completion_tokens": 8192, "is_moderated": False},
             "supported_parameters": params}
            for mid, params in self.supported.items()]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.mode == "error":
            return web.json_response(self.error_body, status=self.error_status)
        created = int(time.time())
        model = body["model"]
        if not body.get("stream"):
            return web.json_response({
                "id": "gen-fake", "provider": "Fake", "model": model, "object": "chat.completion",
                "created": created,
                "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "native_finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Hello from OpenRouter", "refusal": None,
                                         "reasoning": None}}],
                "usage": USAGE})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Generation-Id": "gen-fake"})
        await resp.prepare(request)

        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps({"id": "gen-fake", "provider": "Fake", "model": model,
                                             "object": "chat.completion.chunk", "created": created, **obj}) + b"\n\n"

        def delta(d: dict[str, Any], finish: str | None = None) -> bytes:
            return event({"choices": [{"index": 0, "delta": d, "finish_reason": finish,
                                       "native_finish_reason": finish, "logprobs": None}]})

        await resp.write(b": OPENROUTER PROCESSING\n\n")
        await resp.write(b": OPENROUTER PROCESSING\n\n")
        await resp.write(delta({"role": "assistant", "content": "Hello"}))
        await resp.write(delta({"role": "assistant", "content": " from"}))
        if self.mode == "midstream_error":
            await resp.write(event({"error": MIDSTREAM_ERROR, "choices": [
                {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}))
            return resp                    # OpenRouter terminates the stream after the error event
        await resp.write(delta({"role": "assistant", "content": " OpenRouter"}))
        await resp.write(delta({"role": "assistant", "content": ""}, "stop"))
        await resp.write(event({"choices": [], "usage": USAGE}))
        await resp.write(b"data: [DONE]\n\n")
        return resp
