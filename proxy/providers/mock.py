"""The built-in offline provider: a deterministic reply derived from the prompt, real usage, streams too;
tool calls, `n`, structured output and embeddings as OpenAI shapes them (decided in mock_answer.py).

It speaks OpenAI's wire format through an in-process transport, so it exercises the same relay path as
a real OpenAI-compatible upstream and the default config works with no key and no network.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import orjson

from proxy.config import ProviderConfig, Target
from proxy.context import ChatCall, Usage
from proxy.errors import UpstreamError
from proxy.providers.base import WireRequest
from proxy.providers.mock_answer import MockChoice, MockRefusal, answer, embeddings
from proxy.providers.openai import PassthroughStream, openai_error, read_answer, upstream_body
from proxy.streaming.chunks import DONE, wants_usage


class MockSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reply_tokens: int = 16          # words in each reply (capped by the request's max_tokens)
    token_delay_ms: float = 0.0     # pause between streamed tokens
    first_token_delay_ms: float = 0.0
    embedding_dimensions: int = 8   # vector length when a request sets no `dimensions`


class MockResponse:
    def __init__(self, status: int, body: bytes = b"", chunks: AsyncIterator[bytes] | None = None) -> None:
        self.status = status
        self.headers: Mapping[str, str] = {"content-type": "text/event-stream" if chunks else "application/json"}
        self._body = body
        self._chunks = chunks

    async def read(self) -> bytes:
        return self._body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self._chunks is not None:
            async for c in self._chunks:
                yield c

    def release(self) -> None:
        pass


class MockTransport:
    def __init__(self, config: ProviderConfig) -> None:
        self.settings: MockSettings = config.settings

    async def send(self, wire: WireRequest) -> MockResponse:
        body = orjson.loads(wire.body or b"{}")
        if wire.method == "GET":
            return MockResponse(200, orjson.dumps({"object": "list", "data": [{"id": "mock", "object": "model"}]}))
        s = self.settings
        try:
            if wire.url.endswith("/embeddings"):
                return MockResponse(200, embeddings(body, s.embedding_dimensions))
            choices, usage = answer(body, s.reply_tokens)
        except MockRefusal as e:
            return MockResponse(400, e.body())
        model, created = body.get("model", "mock"), int(time.time())
        cid = "chatcmpl-mock" + hashlib.md5(orjson.dumps([[c.pieces, c.tool_calls] for c in choices])).hexdigest()[:16]
        if s.first_token_delay_ms:
            await asyncio.sleep(s.first_token_delay_ms / 1000)
        if not body.get("stream"):
            return MockResponse(200, orjson.dumps({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": i, "message": _message(c), "logprobs": None, "finish_reason": c.finish}
                            for i, c in enumerate(choices)],
                "usage": usage.openai()}))
        return MockResponse(200, chunks=self._stream(cid, created, model, choices, usage, wants_usage(body)))

    async def _stream(self, cid: str, created: int, model: str, choices: list[MockChoice], usage: Usage,
                      include_usage: bool) -> AsyncIterator[bytes]:
        """OpenAI's chunk sequence per choice: role, content pieces (or each tool call's id and name, then its
        arguments in pieces, by index), the finish reason; then the usage chunk if asked, then [DONE]."""
        def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        delay = self.settings.token_delay_ms / 1000
        for i, c in enumerate(choices):
            if not c.tool_calls:
                yield chunk(i, {"role": "assistant", "content": ""})
            for k, call in enumerate(c.tool_calls):
                head = {"index": k, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                yield chunk(i, {"role": "assistant", "content": None, "tool_calls": [head]} if k == 0
                            else {"tool_calls": [head]})
                args = call["function"]["arguments"]
                for j in range(0, len(args), 16):
                    if delay:
                        await asyncio.sleep(delay)
                    yield chunk(i, {"tool_calls": [{"index": k, "function": {"arguments": args[j:j + 16]}}]})
            for piece in c.pieces:
                if delay:
                    await asyncio.sleep(delay)
                yield chunk(i, {"content": piece})
            yield chunk(i, {}, c.finish)
        if include_usage:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [], "usage": usage.openai()}
            yield b"data: " + orjson.dumps(obj) + b"\n\n"
        yield DONE

    async def close(self) -> None:
        pass


def _message(c: MockChoice) -> dict[str, Any]:
    if c.tool_calls:
        return {"role": "assistant", "content": None, "tool_calls": c.tool_calls, "refusal": None}
    return {"role": "assistant", "content": "".join(c.pieces), "refusal": None}


class MockProvider:
    Settings = MockSettings
    transport = "mock"
    api_key_optional = True

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    def to_wire(self, call: ChatCall, target: Target) -> WireRequest:
        body = upstream_body(call, target.model)
        if call.endpoint == "embeddings":
            return WireRequest(url="mock://local/embeddings", body=orjson.dumps(body))
        if call.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return WireRequest(url="mock://local/chat/completions", body=orjson.dumps(body))

    def from_wire(self, status: int, body: bytes, call: ChatCall, target: Target) -> tuple[bytes, Usage]:
        return body, read_answer(orjson.loads(body), call)

    def error_from_wire(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        return openai_error(self.config.name, status, body, headers)

    def new_stream(self, call: ChatCall, target: Target) -> PassthroughStream:
        return PassthroughStream(strip_usage=not wants_usage(call.body))

    def health_request(self) -> WireRequest | None:
        return WireRequest(method="GET", url="mock://local/models")
