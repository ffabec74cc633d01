"""Anthropic Messages API (`type: anthropic`): POST {base_url}/v1/messages with `x-api-key`.

`anthropic-version` decides which optional fields may be sent (see request.VERSION_PARAMS); a field the
version does not accept is dropped and reported (x-llm-dropped-params), or rejected with a 400 when the
provider's `unsupported_params` is `reject`. Anthropic has no embeddings endpoint.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson

from proxy.config import ProviderConfig, Target
from proxy.context import ChatCall, Usage
from proxy.errors import InvalidRequest, UpstreamError
from proxy.ingress.model_swap import with_model
from proxy.providers.anthropic.passthrough import NativeStream, is_native, native_headers, read_message
from proxy.providers.anthropic.request import accepted_params, answer_tool_name, build_body, unsupported
from proxy.providers.anthropic.response import error_from_body, message_from_wire, usage_from_anthropic
from proxy.providers.anthropic.stream import AnthropicStream
from proxy.providers.base import WireRequest, retry_after_seconds
from proxy.providers.openai import upstream_body
from proxy.streaming.chunks import completion_body, new_id, wants_usage

DEFAULT_BASE_URL = "https://api.anthropic.com"


class AnthropicSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    anthropic_version: Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")] = "2026-10-21"
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 4096   # Anthropic requires max_tokens


class AnthropicProvider:
    Settings = AnthropicSettings
    transport = "http"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.settings: AnthropicSettings = config.settings
        self.base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.accepted = accepted_params(self.settings.anthropic_version)
        self.headers = {"content-type": "application/json", "anthropic-version": self.settings.anthropic_version,
                        **config.headers}
        if config.api_key:
            self.headers["x-api-key"] = config.api_key

    def to_wire(self, call: ChatCall, target: Target) -> WireRequest:
        if call.endpoint == "embeddings":
            raise InvalidRequest(f"Provider '{self.config.name}' (Anthropic) has no {call.endpoint} endpoint; "
                                 "Anthropic offers no embeddings.", param="model", code="unsupported_endpoint")
        if is_native(call):
            assert call.raw_body is not None
            return WireRequest(url=self.base + "/v1/messages", headers=native_headers(call, self.headers),
                               body=with_model(call.raw_body, target.model), native=True)
        body = upstream_body(call, target.model)
        dropped = unsupported(body, self.accepted)
        if dropped and self.config.unsupported_params == "reject":
            p = dropped[0]
            raise InvalidRequest(f"Unsupported parameter: '{p}' is not supported by provider '{self.config.name}' "
                                 f"(Anthropic, anthropic-version {self.settings.anthropic_version}).",
                                 param=p, code="unsupported_parameter")
        wire = build_body(body, target.model, self.accepted, self.settings.default_max_tokens, call.stream)
        return WireRequest(url=self.base + "/v1/messages", headers=self.headers, body=orjson.dumps(wire),
                           dropped=dropped)

    def from_wire(self, status: int, body: bytes, call: ChatCall, target: Target) -> tuple[bytes, Usage]:
        if is_native(call):
            return body, read_message(body, call)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or data.get("type") != "message":
            raise UpstreamError(f"provider '{self.config.name}' sent a body that is not an Anthropic message")
        message, finish = message_from_wire(data, answer_tool_name(call.body))
        usage = usage_from_anthropic(data.get("usage"))
        out = completion_body(id=str(data.get("id") or new_id()), model=str(data.get("model") or target.model),
                              message=message, finish_reason=finish, usage=usage)
        return out, usage

    def error_from_wire(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        return error_from_body(self.config.name, status, body, retry_after_seconds(headers))

    def new_stream(self, call: ChatCall, target: Target) -> AnthropicStream | NativeStream:
        if is_native(call):
            return NativeStream()
        return AnthropicStream(target.model, wants_usage(call.body), answer_tool_name(call.body))

    def health_request(self) -> WireRequest | None:
        return WireRequest(method="GET", url=self.base + "/v1/models",
                           headers={k: v for k, v in self.headers.items() if k != "content-type"})
