"""Anthropic in, Anthropic out: the client's Messages body with only `model` replaced, the answer relayed
as is. Only usage, stop reason and model are read off it (facts for the call), never rewritten."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.context import ChatCall, Usage
from proxy.errors import UpstreamError
from proxy.providers.anthropic.response import FINISH, error_for_type, merge_usage, usage_from_anthropic
from proxy.streaming.sse import SSEDecoder

# Client headers an Anthropic target honours: the body was written for the client's version and betas.
FORWARDED = ("anthropic-version", "anthropic-beta")


def is_native(call: ChatCall) -> bool:
    return call.endpoint == "messages" and call.raw_body is not None


def native_headers(call: ChatCall, base: dict[str, str]) -> dict[str, str]:
    extra = {h: v for h in FORWARDED if (v := call.headers.get(h))}
    return {**base, **extra} if extra else base


def read_message(body: bytes, call: ChatCall) -> Usage:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or data.get("type") != "message":
        raise UpstreamError("the Anthropic upstream sent a body that is not a message")
    if isinstance(data.get("model"), str):
        call.response_model = data["model"]
    if isinstance(data.get("stop_reason"), str):
        call.finish_reasons = [FINISH.get(data["stop_reason"], "stop")]
    return usage_from_anthropic(data.get("usage"))


class NativeStream:
    """Relays the upstream's bytes untouched; decodes the events beside them only for usage, the end, and an
    in-stream error (raised after the bytes before it went out, so the client sees them)."""

    __slots__ = ("_decoder", "_error", "_u", "done", "usage")

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._u: dict[str, int] = {}
        self._error: UpstreamError | None = None
        self.usage: Usage | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        for e in self._decoder.feed(data):
            if e.event in ("message_start", "message_delta"):
                self._read(orjson.loads(e.data))
            elif e.event == "message_stop":
                self.done = True
            elif e.event == "error":
                self._fail(e.data)
                i = data.find(b"event: error")
                return data[:i] if i >= 0 else b""
        return data

    def finish(self) -> bytes:
        if self._error is not None:
            raise self._error
        if not self.done:
            raise UpstreamError("the Anthropic stream ended before message_stop")
        return b""

    def _read(self, obj: Any) -> None:
        u = (obj.get("message") or {}).get("usage") if obj.get("type") == "message_start" else obj.get("usage")
        merged = merge_usage(self._u, u)
        if merged is not None:
            self.usage = merged

    def _fail(self, data: str) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = {}
        err: dict[str, Any] = obj["error"] if isinstance(obj, dict) and isinstance(obj.get("error"), dict) else {}
        etype = err.get("type") if isinstance(err.get("type"), str) else None
        self._error = error_for_type(etype, str(err.get("message") or "the Anthropic stream reported an error"),
                                     None)
