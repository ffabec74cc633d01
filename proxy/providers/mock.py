"""The built-in offline provider: a deterministic reply derived from the prompt, real usage, streams too.

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
from proxy.providers.openai import PassthroughStream, openai_error, read_answer, upstream_body
from proxy.streaming.chunks import DONE, wants_usage

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


class MockSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reply_tokens: int = 16          # words in each reply (capped by the request's max_tokens)
    token_delay_ms: float = 0.0     # pause between streamed tokens
    first_token_delay_ms: float = 0.0


def prompt_text(messages: Any) -> str:
    parts: list[str] = []
    for m in messages if isinstance(messages, list) else []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)


def count_tokens(text: str) -> int:
    """A stable stand-in for a tokenizer: about four characters a token, at least one per word."""
    return max(len(text.split()), (len(text) + 3) // 4)


def mock_reply(body: dict[str, Any], reply_tokens: int) -> tuple[list[str], str, Usage]:
    prompt = prompt_text(body.get("messages"))
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    n = reply_tokens if not isinstance(limit, int) else min(reply_tokens, max(limit, 0))
    seed = hashlib.sha256(prompt.encode()).digest()
    tokens = [("" if i == 0 else " ") + WORDS[seed[i % 32] % len(WORDS)] for i in range(n)]
    finish = "length" if n < reply_tokens else "stop"
    prompt_tokens = count_tokens(prompt) + 3 * len(body.get("messages") or [])
    return tokens, finish, Usage(prompt_tokens=prompt_tokens, completion_tokens=n, total_tokens=prompt_tokens + n)


def mock_embeddings(body: dict[str, Any], dims: int = 8) -> bytes:
    """A unit-ish vector per input, derived from its text: equal inputs give equal vectors."""
    inputs = body["input"] if isinstance(body.get("input"), list) else [body.get("input")]
    data, tokens = [], 0
    for i, item in enumerate(inputs):
        text = item if isinstance(item, str) else orjson.dumps(item).decode()
        tokens += count_tokens(text)
        digest = hashlib.sha256(text.encode()).digest()
        data.append({"object": "embedding", "index": i,
                     "embedding": [round((digest[j] - 127.5) / 127.5, 6) for j in range(dims)]})
    return orjson.dumps({"object": "list", "data": data, "model": body.get("model", "mock"),
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


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
        if wire.url.endswith("/embeddings"):
            return MockResponse(200, mock_embeddings(body))
        s = self.settings
        tokens, finish, usage = mock_reply(body, s.reply_tokens)
        model, cid, created = body.get("model", "mock"), "chatcmpl-mock" + hashlib.md5(
            "".join(tokens).encode()).hexdigest()[:16], int(time.time())
        if s.first_token_delay_ms:
            await asyncio.sleep(s.first_token_delay_ms / 1000)
        if not body.get("stream"):
            return MockResponse(200, orjson.dumps({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage.openai()}))
        return MockResponse(200, chunks=self._stream(cid, created, model, tokens, finish, usage, wants_usage(body)))

    async def _stream(self, cid: str, created: int, model: str, tokens: list[str], finish: str, usage: Usage,
                      include_usage: bool) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        delay = self.settings.token_delay_ms / 1000
        yield chunk({"role": "assistant", "content": ""})
        for t in tokens:
            if delay:
                await asyncio.sleep(delay)
            yield chunk({"content": t})
        yield chunk({}, finish)
        if include_usage:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [], "usage": usage.openai()}
            yield b"data: " + orjson.dumps(obj) + b"\n\n"
        yield DONE

    async def close(self) -> None:
        pass


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
