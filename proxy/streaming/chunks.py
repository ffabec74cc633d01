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
    """Encodes `chat.completion.chunk` events for one stream; every adapter's translator uses it.

    Per chunk only the delta is encoded: the constant head (id, created, model) is encoded once and
    spliced in, which keeps a converting adapter's per-chunk cost close to the pass-through relay's."""

    __slots__ = ("_head", "_key", "_tail", "created", "id", "include_usage", "model")

    def __init__(self, model: str, include_usage: bool, id: str | None = None) -> None:
        self.id = id or new_id()
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self._key: tuple[str, str] | None = None
        self._head = b""
        self._tail = b',"logprobs":null,"finish_reason":null}]' + (b',"usage":null}\n\n' if include_usage
                                                                  else b"}\n\n")

    def _prefix(self) -> bytes:
        if self._key != (self.id, self.model):       # id and model may be set from the provider's first event
            self._key = (self.id, self.model)
            self._head = (b'data: {"id":' + orjson.dumps(self.id) + b',"object":"chat.completion.chunk","created":'
                          + str(self.created).encode() + b',"model":' + orjson.dumps(self.model)
                          + b',"choices":[{"index":')
        return self._head

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None, index: int = 0) -> bytes:
        head = self._prefix()
        idx = b"0" if index == 0 else str(index).encode()
        if finish_reason is None:
            return head + idx + b',"delta":' + orjson.dumps(delta) + self._tail
        return (head + idx + b',"delta":' + orjson.dumps(delta) + b',"logprobs":null,"finish_reason":'
                + orjson.dumps(finish_reason) + b"}]" + (b',"usage":null}\n\n' if self.include_usage else b"}\n\n"))

    def raw_delta(self, delta_json: bytes, index: int = 0) -> bytes:
        """A chunk whose delta is already valid JSON (e.g. a provider's string literal spliced in)."""
        idx = b"0" if index == 0 else str(index).encode()
        return self._prefix() + idx + b',"delta":' + delta_json + self._tail

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
