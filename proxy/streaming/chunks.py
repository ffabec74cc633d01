"""OpenAI response encoding shared by converting adapters: chat.completion bodies and chunk SSE bytes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from proxy.context import Usage

DONE = b"data: [DONE]\n\n"


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + uuid.uuid4().hex[:24]


def completion_body(*, id: str, model: str, message: dict[str, Any], finish_reason: str | None,
                    usage: Usage, created: int | None = None, extra: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage.openai(),
    }
    if extra:
        body.update(extra)
    return orjson.dumps(body)


class ChunkWriter:
    """Encodes `chat.completion.chunk` events for one stream; every adapter's translator uses it."""

    __slots__ = ("_head", "created", "id", "include_usage", "model")

    def __init__(self, model: str, include_usage: bool, id: str | None = None) -> None:
        self.id = id or new_id()
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None, index: int = 0) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            obj["usage"] = None
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def usage(self, usage: Usage) -> bytes:
        """The final usage chunk (empty choices), only when the client asked for it."""
        if not self.include_usage:
            return b""
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [], "usage": usage.openai()}
        return b"data: " + orjson.dumps(obj) + b"\n\n"


def wants_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))
