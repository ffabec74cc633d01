"""OpenAI and every OpenAI-compatible vendor (OpenRouter, Groq, Together, Mistral, DeepSeek, vLLM, Ollama /v1).

Requests pass through with unknown fields intact; streams are relayed byte for byte, and the translator
only peeks at the usage event.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

from proxy.config import ProviderConfig, Target
from proxy.context import ChatCall, Usage, usage_from_openai
from proxy.errors import UpstreamError, upstream_error_for_status
from proxy.ingress.model_swap import with_model
from proxy.providers.base import WireRequest, retry_after_seconds
from proxy.providers.openai_responses import NativeResponsesStream, is_native, read_response
from proxy.streaming.chunks import wants_usage

# Fields of the seed's request schema that are ours, not the provider's.
PROXY_FIELDS = ("options", "cache")
PROXY_METADATA = ("source_id", "source_type", "priority", "budget_id")


def upstream_body(call: ChatCall, model: str) -> dict[str, Any]:
    """The client's body with the routed model name and without the proxy's own extension fields."""
    body = dict(call.body)
    body["model"] = model
    for f in PROXY_FIELDS:
        body.pop(f, None)
    md = body.get("metadata")
    if isinstance(md, dict) and any(k in md for k in PROXY_METADATA):
        rest = {k: v for k, v in md.items() if k not in PROXY_METADATA}
        if rest:
            body["metadata"] = rest
        else:
            del body["metadata"]
    return body


def read_answer(data: dict[str, Any], call: ChatCall) -> Usage:
    """An OpenAI chat answer's usage; its finish reasons and model go on the call (read here, where the
    body is parsed anyway, rather than by a scan of the bytes later)."""
    choices = data.get("choices")
    if isinstance(choices, list):
        call.finish_reasons = [r for c in choices if isinstance(c, dict)
                               and isinstance(r := c.get("finish_reason"), str)]
    model = data.get("model")
    if isinstance(model, str):
        call.response_model = model
    return usage_from_openai(data.get("usage")) or Usage(estimated=True)


class OpenAISettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    stream_usage: bool = True      # ask the upstream for a usage chunk even when the client did not
    chat_path: str = "/chat/completions"
    embeddings_path: str = "/embeddings"
    models_path: str = "/models"
    responses: bool = False        # the upstream serves the Responses API: /v1/responses passes through
    responses_path: str = "/responses"
    completions_path: str = "/completions"   # legacy text completions


class OpenAIProvider:
    Settings = OpenAISettings
    transport = "http"
    legacy_completions = True      # serves POST /v1/completions (the router skips providers that do not)

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.settings: OpenAISettings = config.settings
        self.base = config.base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"

    def to_wire(self, call: ChatCall, target: Target) -> WireRequest:
        if is_native(call, self.settings.responses):
            assert call.raw_body is not None
            return WireRequest(url=self.base + self.settings.responses_path, headers=self.headers,
                               body=with_model(call.raw_body, target.model), native=True)
        body = upstream_body(call, target.model)
        if call.stream and self.settings.stream_usage and not wants_usage(body):
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        s = self.settings
        path = (s.embeddings_path if call.endpoint == "embeddings" else
                s.completions_path if call.endpoint == "completions" else s.chat_path)
        return WireRequest(url=self.base + path, headers=self.headers, body=orjson.dumps(body))

    def from_wire(self, status: int, body: bytes, call: ChatCall, target: Target) -> tuple[bytes, Usage]:
        if is_native(call, self.settings.responses):
            return body, read_response(body, call)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider '{self.config.name}' sent a body that is not JSON") from None
        if not isinstance(data, dict):
            return body, Usage(estimated=True)
        return body, read_answer(data, call)

    def error_from_wire(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        return openai_error(self.config.name, status, body, headers)

    def new_stream(self, call: ChatCall, target: Target) -> PassthroughStream | NativeResponsesStream:
        if is_native(call, self.settings.responses):
            return NativeResponsesStream(call)
        strip = self.settings.stream_usage and not wants_usage(call.body)
        return PassthroughStream(strip_usage=strip)

    def health_request(self) -> WireRequest | None:
        return WireRequest(method="GET", url=self.base + self.settings.models_path, headers=self.headers)


def openai_error(provider: str, status: int, body: bytes, headers: Any) -> UpstreamError:
    """An OpenAI-format error body keeps its message, type, param and code."""
    message, etype, code, param = f"provider '{provider}' answered HTTP {status}", None, None, None
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            etype = err.get("type") if isinstance(err.get("type"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
            param = err.get("param") if isinstance(err.get("param"), str) else None
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        pass
    if code == "context_length_exceeded":
        return upstream_error_for_status(400, message, type="invalid_request_error", code=code, param=param)
    return upstream_error_for_status(status, message, type=etype, code=code, param=param,
                                     retry_after=retry_after_seconds(headers))


_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class PassthroughStream:
    """Relays OpenAI SSE untouched. Looks only for the usage event and `[DONE]`; with `strip_usage`
    (we asked for usage, the client did not) it drops the usage-only event and holds partial events."""

    __slots__ = ("_strip", "_tail", "done", "usage")

    def __init__(self, strip_usage: bool) -> None:
        self._strip = strip_usage
        self._tail = b""
        self.usage: Usage | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self._tail + data if self._tail else data
        end = _last_boundary(buf)
        if end < 0:
            self._tail = buf
            return b"" if self._strip else data
        complete, self._tail = buf[:end], buf[end:]
        if not self.done and b"[DONE]" in complete:
            self.done = True
        if (m := _find_usage(complete, 0)) is None:
            return complete if self._strip else data
        kept = self._take_usage(complete, m)
        return kept if self._strip else data

    def _take_usage(self, complete: bytes, m: re.Match[bytes] | None) -> bytes:
        """Record usage from the events in `complete`; return them minus usage-only events. Only the
        events the usage pattern matched are cut out and parsed; the ones around them are kept as they
        are (a burst of 20 events in one read cost ~12 µs a stream split one by one)."""
        if b"\r" in complete:                        # CR framing: the general split
            return b"".join(e for e in _split_events(complete) if self._kept(e))
        out: list[bytes] = []
        pos = 0
        while m is not None:
            start = complete.rfind(b"\n\n", pos, m.start())
            start = pos if start < 0 else start + 2
            end = complete.find(b"\n\n", m.end())
            end = len(complete) if end < 0 else end + 2
            out.append(complete[pos:start])
            event = complete[start:end]
            if self._kept(event):
                out.append(event)
            pos = end
            m = _find_usage(complete, pos)
        out.append(complete[pos:])
        return b"".join(out)

    def _kept(self, event: bytes) -> bool:
        """Takes the usage from an event that reports it; False for a usage-only event (no choices)."""
        if _find_usage(event, 0) is None:
            return True
        payload = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return True
        u = usage_from_openai(obj.get("usage")) if isinstance(obj, dict) else None
        if u is not None:
            self.usage = u
        return not (isinstance(obj, dict) and obj.get("choices") == [])

    def finish(self) -> bytes:
        rest, self._tail = self._tail, b""
        if not self.done:
            if rest and b"[DONE]" in rest:
                self.done = True
            else:
                raise UpstreamError("upstream stream ended before [DONE]")
        return rest if self._strip else b""


def _find_usage(buf: bytes, pos: int) -> re.Match[bytes] | None:
    """`_USAGE` from `pos`: bytes.find for the name, the pattern only where it is (twice as fast as
    the pattern's own scan over a burst of events)."""
    while (i := buf.find(b'"usage"', pos)) >= 0:
        if (m := _USAGE.match(buf, i)) is not None:
            return m
        pos = i + 7
    return None


def _last_boundary(buf: bytes) -> int:
    """Index just past the last event boundary, or -1."""
    i = buf.rfind(b"\n\n")
    if i >= 0 and b"\r" not in buf:
        return i + 2
    best = -1
    for m in _BOUNDARY.finditer(buf):
        best = m.end()
    return best


def _split_events(complete: bytes) -> list[bytes]:
    """Split at boundaries, keeping each event's own terminator with it."""
    events: list[bytes] = []
    pos = 0
    for m in _BOUNDARY.finditer(complete):
        events.append(complete[pos:m.end()])
        pos = m.end()
    if pos < len(complete):
        events.append(complete[pos:])
    return events
