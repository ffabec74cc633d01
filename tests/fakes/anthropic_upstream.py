"""A fake Anthropic Messages API speaking the real wire format (SDK `Message`, `RawMessageStreamEvent`,
`ErrorResponse`). It records what it received, and like the real API it answers 400 "Extra inputs are not
permitted" to a field the requested `anthropic-version` does not define.

Standalone, for the bench: `python -m tests.fakes.anthropic_upstream --port 9100 --chunks 64` serves
streams of 64 text deltas (accepting `x-api-key: sk-ant-bench` unless `--api-key` says otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
from aiohttp import web

# Top-level request fields each version defines (2026-10-21 as in the installed SDK's MessageCreateParams).
_BASE = {"model", "max_tokens", "messages", "cache_control", "container", "diagnostics", "inference_geo",
         "metadata", "output_config", "service_tier", "speed", "stop_sequences", "system", "thinking",
         "tool_choice", "tools", "user_profile_id", "workspace_id", "stream"}
FIELDS = {"2023-06-01": _BASE | {"temperature", "top_p", "top_k"}, "2026-10-21": _BASE}

ERRORS: dict[str, tuple[int, str, str]] = {
    "error429": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    "error529": (529, "overloaded_error", "Overloaded"),
    "error500": (500, "api_error", "Internal server error"),
    "prompt_too_long": (400, "invalid_request_error", "prompt is too long: 209353 tokens > 199999 maximum"),
    "error401": (401, "authentication_error", "invalid x-api-key"),
}


def error_body(etype: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_fake0123456789"}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class FakeAnthropic:
    """`mode`: ok | tools | parallel_tools | stream_error | no_stop | one of ERRORS."""

    def __init__(self, api_key: str = "sk-ant-upstream-secret", chunks: int | None = None) -> None:
        self.api_key = api_key
        self.mode = "ok"
        self.reply = "Hello from the fake Claude"
        self.chunks = chunks            # text deltas per stream (default: one per word of `reply`)
        self.usage = {"input_tokens": 21, "output_tokens": 6, "cache_read_input_tokens": 0,
                      "cache_creation_input_tokens": 0}
        self.requests: list[dict[str, Any]] = []
        self.raw: list[bytes] = []          # each request body's bytes, as they arrived
        self._sent: list[bytes] = []        # the last stream's writes (see `streamed`)
        self.headers: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/messages", self.messages)
        self.app.router.add_get("/v1/models", self.models)

    @property
    def streamed(self) -> bytes:
        """The bytes of the last stream, as they were sent."""
        return b"".join(self._sent)

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-api-key") != self.api_key:
            return web.json_response(error_body("authentication_error", "invalid x-api-key"), status=401)
        return None

    async def models(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        model = {"type": "model", "id": "claude-haiku-4-5", "display_name": "Claude Haiku 4.5",
                 "created_at": "2025-10-01T00:00:00Z"}
        return web.json_response({"data": [model], "has_more": False, "first_id": model["id"],
                                  "last_id": model["id"]})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.raw.append(await request.read())
        body = orjson.loads(self.raw[-1])
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        denied = self._auth(request)
        if denied is not None:
            return denied
        bad = self._check(request.headers.get("anthropic-version", ""), body)
        if bad is not None:
            return web.json_response(error_body("invalid_request_error", bad), status=400)
        if self.mode in ERRORS:
            status, etype, msg = ERRORS[self.mode]
            headers = {"retry-after": "7"} if status == 429 else {}
            return web.json_response(error_body(etype, msg), status=status, headers=headers)
        blocks, stop = self._content(body)
        if not body.get("stream"):
            return web.json_response({
                "id": "msg_fake01", "type": "message", "role": "assistant", "model": body["model"],
                "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": self.usage})
        return await self._stream(request, body, blocks, stop)

    def _check(self, version: str, body: dict[str, Any]) -> str | None:
        allowed = FIELDS.get(version)
        if allowed is None:
            return f"anthropic-version: unknown version {version!r}"
        for k in body:
            if k not in allowed:
                return f"{k}: Extra inputs are not permitted"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        return None

    def _content(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        forced = body.get("tool_choice") or {}
        if forced.get("type") == "tool":
            return [{"type": "tool_use", "id": "toolu_fake_answer", "name": forced["name"],
                     "input": {"answer": 42}}], "tool_use"
        if self.mode == "tools":
            return [{"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_fake_1", "name": "get_weather",
                     "input": {"city": "Paris"}}], "tool_use"
        if self.mode == "parallel_tools":
            return [{"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "toolu_fake_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_fake_2", "name": "get_weather",
                     "input": {"city": "Tokyo"}}], "tool_use"
        return [{"type": "text", "text": self.reply}], "end_turn"

    async def _stream(self, request: web.Request, body: dict[str, Any], blocks: list[dict[str, Any]],
                      stop: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sent = self._sent = []
        send = resp.write

        async def write(data: bytes) -> None:
            sent.append(data)
            await send(data)
        resp.write = write  # type: ignore[method-assign]
        start_usage = {**self.usage, "output_tokens": 1}
        await resp.write(sse("message_start", {"type": "message_start", "message": {
            "id": "msg_fake01", "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}}))
        await resp.write(sse("ping", {"type": "ping"}))
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                await resp.write(sse("content_block_start", {"type": "content_block_start", "index": i,
                                                             "content_block": {"type": "text", "text": ""}}))
                for piece in self._pieces(block["text"]):
                    await resp.write(sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                                 "delta": {"type": "text_delta", "text": piece}}))
                    if self.mode == "stream_error":
                        await resp.write(sse("error", error_body("overloaded_error", "Overloaded")))
                        return resp
            else:
                start = {**block, "input": {}}
                await resp.write(sse("content_block_start", {"type": "content_block_start", "index": i,
                                                             "content_block": start}))
                args = orjson.dumps(block["input"]).decode()
                for piece in ("", args[:5], args[5:]):
                    await resp.write(sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                                 "delta": {"type": "input_json_delta",
                                                                           "partial_json": piece}}))
            await resp.write(sse("content_block_stop", {"type": "content_block_stop", "index": i}))
        await resp.write(sse("message_delta", {"type": "message_delta",
                                               "delta": {"stop_reason": stop, "stop_sequence": None},
                                               "usage": {"output_tokens": self.usage["output_tokens"]}}))
        if self.mode != "no_stop":
            await resp.write(sse("message_stop", {"type": "message_stop"}))
        return resp

    def _pieces(self, text: str) -> list[str]:
        if self.chunks is not None:
            return [("" if i == 0 else " ") + "tok" for i in range(self.chunks)]
        words = text.split(" ")
        return [("" if i == 0 else " ") + w for i, w in enumerate(words)]


async def _serve(host: str, port: int, chunks: int | None, api_key: str) -> None:
    fake = FakeAnthropic(api_key=api_key, chunks=chunks)
    runner = web.AppRunner(fake.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"fake anthropic upstream on http://{host}:{port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="A fake Anthropic Messages API for tests and the bench.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--chunks", type=int, default=None, help="text deltas per streamed reply")
    ap.add_argument("--api-key", default="sk-ant-bench", help="the x-api-key it accepts")
    args = ap.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port, args.chunks, args.api_key))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
