"""OpenRouter (`type: openrouter`): the OpenAI-compatible adapter plus OpenRouter's extras.

- App attribution headers (`HTTP-Referer`, `X-OpenRouter-Title` and its older name `X-Title`,
  `X-OpenRouter-Categories`) from config.
- Provider-routing fields (`provider`, `models`, `route`, `transforms`, `plugins`, `usage`, ...) pass through.
- Parameter caching (openrouter_params.py): parameters the target model does not list in its
  `supported_parameters` are dropped (reported in `x-llm-dropped-params`) or rejected with a 400.
- Errors: `{"error": {"code": <int>, "message", "metadata": {"error_type", ...}}}` mapped structurally,
  by `error_type` first, then by code. A mid-stream error arrives as a data event with a top-level `error`
  and `finish_reason: "error"`; it is relayed untouched (the OpenAI SDK raises on it) and then ends the
  stream as an UpstreamError so the failure is recorded.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import orjson

from proxy.config import ProviderConfig, Target
from proxy.context import ChatCall, Usage
from proxy.errors import InvalidRequest, UpstreamError, UpstreamTimeout, upstream_error_for_status
from proxy.providers.base import WireRequest, retry_after_seconds
from proxy.providers.openai import (
    OpenAIProvider,
    OpenAISettings,
    PassthroughStream,
    _split_events,
    openai_error,
)
from proxy.providers.openrouter_params import ParamCache, unsupported
from proxy.streaming.chunks import wants_usage

if TYPE_CHECKING:
    from proxy.upstream import Transport

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"


class OpenRouterSettings(OpenAISettings, frozen=True, forbid_unknown_fields=True):
    referer: str = ""              # HTTP-Referer: your app's URL (OpenRouter app attribution)
    title: str = ""                # X-OpenRouter-Title / X-Title: your app's display name
    categories: str = ""           # X-OpenRouter-Categories: comma-separated marketplace categories
    params_ttl: float = 3600.0     # seconds the model list (supported parameters) is cached
    params_retry: float = 60.0     # after a failed fetch, or for a model the list lacks: wait before refetching
    params_timeout: float = 5.0    # seconds a model-list fetch may take before the request goes unfiltered


class OpenRouterProvider(OpenAIProvider):
    Settings = OpenRouterSettings

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.settings: OpenRouterSettings = config.settings
        s = self.settings
        self.base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        for name, value in (("HTTP-Referer", s.referer), ("X-OpenRouter-Title", s.title), ("X-Title", s.title),
                            ("X-OpenRouter-Categories", s.categories)):
            if value:
                self.headers.setdefault(name, value)
        self.params = ParamCache(url=self.base + s.models_path,
                                 headers={k: v for k, v in self.headers.items() if k != "Content-Type"},
                                 ttl=s.params_ttl, retry=s.params_retry, timeout=s.params_timeout,
                                 provider=config.name)

    async def prepare(self, target: Target, transport: Transport) -> None:
        """Awaited by the router before to_wire: make the supported-parameter cache fresh (shared fetch)."""
        await self.params.ensure(target.model, transport)

    def to_wire(self, call: ChatCall, target: Target) -> WireRequest:
        supported = (self.params.lookup(target.model) if call.endpoint not in ("embeddings", "completions")
                     else None)
        drop = unsupported(call.body, supported) if supported is not None else []
        if not drop:
            return super().to_wire(call, target)
        if self.config.unsupported_params == "reject":
            raise InvalidRequest(f"Model '{call.model}' does not support the parameter '{drop[0]}'.",
                                 param=drop[0], code="unsupported_parameter")
        gone = set(drop)
        trimmed = dataclasses.replace(call, body={k: v for k, v in call.body.items() if k not in gone})
        wire = super().to_wire(trimmed, target)
        wire.dropped = drop
        return wire

    def from_wire(self, status: int, body: bytes, call: ChatCall, target: Target) -> tuple[bytes, Usage]:
        out, usage = super().from_wire(status, body, call, target)
        if b'"error"' in body:
            failed = _failed_choice_error(orjson.loads(body))
            if failed is not None:
                raise openrouter_error(self.config.name, status, failed, None)
        return out, usage

    def error_from_wire(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            return openai_error(self.config.name, status, body, headers)
        return openrouter_error(self.config.name, status, err, headers)

    def new_stream(self, call: ChatCall, target: Target) -> OpenRouterStream:
        return OpenRouterStream(self.settings.stream_usage and not wants_usage(call.body), self.config.name)


def _failed_choice_error(data: Any) -> dict | None:
    """A 200 answer whose every choice ended in `finish_reason: "error"` with nothing generated: its error."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        return None
    for c in choices:
        if not (isinstance(c, dict) and c.get("finish_reason") == "error" and isinstance(c.get("error"), dict)):
            return None
        msg = c.get("message") or {}
        if isinstance(msg, dict) and (msg.get("content") or msg.get("tool_calls")):
            return None                    # partial output: relay it as OpenRouter sent it
    return choices[0]["error"]


# error.metadata.error_type (OpenRouter's typed error codes) -> the HTTP status it stands for.
_TYPE_STATUS = {
    "context_length_exceeded": 400, "max_tokens_exceeded": 400, "token_limit_exceeded": 400,
    "string_too_long": 400, "invalid_request": 400, "invalid_prompt": 400, "content_policy_violation": 400,
    "refusal": 400, "invalid_image": 400, "image_too_large": 400, "image_too_small": 400,
    "unsupported_image_format": 400, "image_download_failed": 400, "authentication": 401,
    "payment_required": 402, "permission_denied": 403, "not_found": 404, "image_not_found": 404,
    "precondition_failed": 412, "payload_too_large": 413, "unprocessable": 422, "rate_limit_exceeded": 429,
    "server": 502, "unmapped": 502, "provider_unavailable": 502, "provider_overloaded": 503, "timeout": 504,
}
# 400-class error types whose name is a useful OpenAI-style `code`.
_TYPE_AS_CODE = frozenset(t for t, s in _TYPE_STATUS.items() if s == 400 and t != "invalid_request")


def openrouter_error(provider: str, status: int, err: dict, headers: Any) -> UpstreamError:
    """OpenRouter's error object -> the OpenAI envelope, by `error_type`, then `code`, then HTTP status."""
    meta: dict[str, Any] = _dict(err.get("metadata"))
    avail: dict[str, Any] = _dict(err.get("availability"))
    etype = meta.get("error_type") or err.get("error_type")
    etype = etype if isinstance(etype, str) else None
    code = err.get("code")
    if isinstance(code, int) and 400 <= code < 600:
        st = code
    elif isinstance(err.get("http_status"), int):
        st = err["http_status"]
    elif etype in _TYPE_STATUS:
        st = _TYPE_STATUS[etype]
    else:
        st = status if status >= 400 else 502
    raw_message = err.get("message")
    message = raw_message if isinstance(raw_message, str) and raw_message \
        else f"provider '{provider}' answered HTTP {st}"
    retry_after = retry_after_seconds(headers)
    if retry_after is None and isinstance(avail.get("retry_after"), int | float):
        retry_after = float(avail["retry_after"])
    param = "model" if avail.get("code") == "model_not_found" else None
    if st == 402 or etype == "payment_required":
        # Out of OpenRouter credits: reported as OpenAI reports an exhausted quota, and not worth a retry
        # by the client; the router may still try the model's next target.
        return UpstreamError(message, status=429, type="insufficient_quota", code="insufficient_quota",
                             retryable=True, final=True)
    if st == 403 and isinstance(meta.get("reasons"), list):
        reasons = ", ".join(str(r) for r in meta["reasons"])
        return UpstreamError(f"{message} (flagged by moderation: {reasons})" if reasons else message,
                             status=403, type="permission_error", code="content_filter", retryable=False)
    if st == 504 or etype == "timeout":
        return UpstreamTimeout(message)
    if etype in _TYPE_AS_CODE:
        return upstream_error_for_status(400, message, type="invalid_request_error", code=etype, param=param)
    acode = avail.get("code") if isinstance(avail.get("code"), str) else None
    return upstream_error_for_status(st, message, code=acode or (etype if st == 429 else None), param=param,
                                     retry_after=retry_after)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


class OpenRouterStream(PassthroughStream):
    """PassthroughStream that also notices OpenRouter's in-band error event (top-level `error` object,
    `finish_reason: "error"`). The event is relayed untouched; finish() then raises it as an UpstreamError,
    so the stream is recorded as failed and the client gets an `event: error` after it."""

    __slots__ = ("failure", "provider")

    def __init__(self, strip_usage: bool, provider: str) -> None:
        super().__init__(strip_usage)
        self.failure: UpstreamError | None = None
        self.provider = provider

    def feed(self, data: bytes) -> bytes:
        prev = self._tail
        out = super().feed(data)
        if self.failure is None:
            n = len(prev) + len(data) - len(self._tail)       # bytes that just completed whole events
            if n > 0:
                complete = (prev + data)[:n] if prev else data[:n]
                if b'"error"' in complete:
                    self._look(complete)
        return out

    def _look(self, complete: bytes) -> None:
        for event in _split_events(complete):
            if b'"error"' not in event:
                continue
            payload = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
                err = openrouter_error(self.provider, 200, obj["error"], None)
                err.retryable = False          # bytes reached the client: no retry, no fallback
                self.failure = err
                return

    def finish(self) -> bytes:
        if self.failure is not None and not self.done:
            self._tail = b""
            raise self.failure
        return super().finish()
