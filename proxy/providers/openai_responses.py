"""Responses API in, Responses API out, for OpenAI-type providers whose upstream serves /v1/responses
(`responses: true`): the client's body with only `model` replaced, the answer relayed as is. Only usage,
status and model are read off it (facts for the call), never rewritten."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.context import ChatCall, Usage
from proxy.errors import UpstreamError
from proxy.streaming.sse import SSEDecoder

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def is_native(call: ChatCall, serves_responses: bool) -> bool:
    return serves_responses and call.endpoint == "responses" and call.raw_body is not None


def usage_from_responses(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage(estimated=True)
    details: dict[str, Any] = u["input_tokens_details"] if isinstance(u.get("input_tokens_details"), dict) else {}
    prompt, completion = int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0)
    return Usage(prompt, completion, int(u.get("total_tokens") or prompt + completion),
                 int(details.get("cached_tokens") or 0), int(details.get("cache_write_tokens") or 0))


def read_response(body: bytes, call: ChatCall) -> Usage:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or data.get("object") != "response":
        raise UpstreamError("the upstream sent a body that is not a Response")
    _facts(data, call)
    return usage_from_responses(data.get("usage"))


def _facts(resp: dict[str, Any], call: ChatCall) -> None:
    if isinstance(resp.get("model"), str):
        call.response_model = resp["model"]
    if isinstance(resp.get("status"), str):
        call.finish_reasons = [resp["status"]]


class NativeResponsesStream:
    """Relays the upstream's bytes untouched; reads the terminal event beside them for usage."""

    __slots__ = ("_call", "_decoder", "done", "usage")

    def __init__(self, call: ChatCall) -> None:
        self._call = call
        self._decoder = SSEDecoder()
        self.usage: Usage | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes:
        for e in self._decoder.feed(data):          # the event name is enough: only the last one is parsed
            if e.event in TERMINAL:
                resp = orjson.loads(e.data).get("response") or {}
                self.usage = usage_from_responses(resp.get("usage"))
                _facts(resp, self._call)
                self.done = True
        return data

    def finish(self) -> bytes:
        if not self.done:
            raise UpstreamError("the upstream Responses stream ended before its terminal event")
        return b""
