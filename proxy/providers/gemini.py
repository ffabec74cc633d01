"""Google Gemini Developer API (`type: gemini`): generateContent, streamGenerateContent (SSE), batchEmbedContents.

The key travels in the `x-goog-api-key` header, never in the URL, so it cannot leak into access logs.
Request mapping lives in gemini_request.py, response and stream mapping in gemini_stream.py.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any, Literal
from urllib.parse import quote

import msgspec
import orjson

from proxy.config import ConfigError, ProviderConfig, Target
from proxy.context import ChatCall, Usage
from proxy.errors import InvalidRequest, UpstreamError, UpstreamTimeout, upstream_error_for_status
from proxy.providers.base import WireRequest, retry_after_seconds
from proxy.providers.gemini_request import build_generate_body, unsupported_params
from proxy.providers.gemini_stream import GeminiStream, response_body
from proxy.streaming.chunks import wants_usage

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"


class SafetySetting(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    category: str           # e.g. HARM_CATEGORY_HARASSMENT
    threshold: str          # e.g. BLOCK_ONLY_HIGH, BLOCK_NONE


class GeminiSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    api_version: str = "v1beta"
    # json_schema: tools and response_format schemas go as `parametersJsonSchema` / `responseJsonSchema`
    # (full JSON Schema); openapi: as `parameters` / `responseSchema`, trimmed to the OpenAPI subset.
    schema_format: Literal["json_schema", "openapi"] = "json_schema"
    safety_settings: list[SafetySetting] = []
    # Models (regex on the upstream model name) for which a replayed function call without its thought
    # signature gets Google's documented `skip_thought_signature_validator`; "" turns this off.
    thought_signature_fallback: str = "^gemini-3"
    embedding_task_type: str = ""          # e.g. RETRIEVAL_DOCUMENT, SEMANTIC_SIMILARITY; "" = model default


class GeminiProvider:
    Settings = GeminiSettings
    transport = "http"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.settings: GeminiSettings = config.settings
        self.base = (config.base_url or DEFAULT_BASE_URL).rstrip("/") + "/" + self.settings.api_version.strip("/")
        self.headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            self.headers["x-goog-api-key"] = config.api_key
        self._safety = [{"category": s.category, "threshold": s.threshold} for s in self.settings.safety_settings]
        fb = self.settings.thought_signature_fallback
        try:
            self._sig_fallback = re.compile(fb) if fb else None
        except re.error:
            raise ConfigError(f"providers.{config.name}.thought_signature_fallback: not a valid regular "
                              "expression") from None

    def _model_url(self, model: str, method: str) -> str:
        path = model if "/" in model else "models/" + model       # "tunedModels/x" stays as it is
        return f"{self.base}/{quote(path, safe='/')}:{method}"

    def to_wire(self, call: ChatCall, target: Target) -> WireRequest:
        if call.endpoint == "embeddings":
            return self._embed_wire(call, target)
        dropped = unsupported_params(call.body)
        if dropped and self.config.unsupported_params == "reject":
            raise InvalidRequest(f"Unsupported parameter: '{dropped[0]}' is not supported with this model.",
                                 param=dropped[0], code="unsupported_parameter")
        model = target.model.removeprefix("models/")
        body = build_generate_body(call.body, schema_format=self.settings.schema_format,
                                   safety_settings=self._safety,
                                   signature_fallback=bool(self._sig_fallback and self._sig_fallback.search(model)))
        if call.stream:
            url = self._model_url(target.model, "streamGenerateContent") + "?alt=sse"
        else:
            url = self._model_url(target.model, "generateContent")
        return WireRequest(url=url, headers=self.headers, body=orjson.dumps(body), dropped=dropped)

    def from_wire(self, status: int, body: bytes, call: ChatCall, target: Target) -> tuple[bytes, Usage]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider '{self.config.name}' sent a body that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"provider '{self.config.name}' sent an unexpected JSON body")
        if call.endpoint == "embeddings":
            return self._embed_result(data, call, target)
        return response_body(data, target.model)

    def new_stream(self, call: ChatCall, target: Target) -> GeminiStream:
        return GeminiStream(target.model, wants_usage(call.body), self._stream_error)

    def _stream_error(self, obj: dict[str, Any]) -> UpstreamError:
        """An `{"error": ...}` event inside a 200 stream, mapped like an error body of its own code."""
        code = obj["error"].get("code")
        return self.error_from_wire(code if isinstance(code, int) else 500, orjson.dumps(obj), None)

    def health_request(self) -> WireRequest | None:
        return WireRequest(method="GET", url=self.base + "/models?pageSize=1", headers=self.headers)

    def error_from_wire(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        return google_error(self.config.name, status, body, headers, secret=self.config.api_key)

    # -- embeddings ---------------------------------------------------------------------------------------

    def _embed_wire(self, call: ChatCall, target: Target) -> WireRequest:
        texts = embedding_inputs(call.body.get("input"))
        model = target.model if "/" in target.model else "models/" + target.model
        req: dict[str, Any] = {"model": model}
        if self.settings.embedding_task_type:
            req["taskType"] = self.settings.embedding_task_type
        dims = call.body.get("dimensions")
        if isinstance(dims, int) and not isinstance(dims, bool):
            req["outputDimensionality"] = dims
        body = {"requests": [{**req, "content": {"parts": [{"text": t}]}} for t in texts]}
        return WireRequest(url=self._model_url(target.model, "batchEmbedContents"), headers=self.headers,
                           body=orjson.dumps(body))

    def _embed_result(self, data: dict[str, Any], call: ChatCall, target: Target) -> tuple[bytes, Usage]:
        as_b64 = call.body.get("encoding_format") == "base64"
        items = []
        for i, e in enumerate(data.get("embeddings") or []):
            values = e.get("values") or []
            vec: Any = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode() if as_b64 else values
            items.append({"object": "embedding", "index": i, "embedding": vec})
        um = data.get("usageMetadata")
        if isinstance(um, dict) and um.get("promptTokenCount") is not None:
            n = int(um["promptTokenCount"])
            usage = Usage(prompt_tokens=n, total_tokens=n)
        else:
            n = sum(_estimate_tokens(t) for t in embedding_inputs(call.body.get("input")))
            usage = Usage(prompt_tokens=n, total_tokens=n, estimated=True)
        out = {"object": "list", "data": items, "model": target.model,
               "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}}
        return orjson.dumps(out), usage


def embedding_inputs(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        return raw
    raise InvalidRequest("Invalid 'input': this model takes a string or an array of strings "
                         "(token arrays are not supported).", param="input", code="invalid_value")


def _estimate_tokens(text: str) -> int:
    """About four characters a token: Gemini's batchEmbedContents reports no usage."""
    return max(1, (len(text) + 3) // 4)


# -- errors -------------------------------------------------------------------------------------------------

_TOO_LONG = re.compile(r"input token count.*exceeds the maximum", re.I | re.S)


def google_error(provider: str, status: int, body: bytes, headers: Any, secret: str = "") -> UpstreamError:
    """Google's `{"error": {code, message, status, details}}` -> our error, mapped by its canonical
    `status`, with the retry delay from a RetryInfo detail. Context overflow has no structured marker in
    Gemini's answer: it is INVALID_ARGUMENT with the documented message "The input token count (N) exceeds
    the maximum number of tokens allowed (M)", so that message is matched."""
    message, gstatus, details = f"provider '{provider}' answered HTTP {status}", "", []
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, list) and data:             # streaming endpoints wrap the error in an array
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        gstatus = str(err.get("status") or "")
        details = [d for d in err.get("details") or [] if isinstance(d, dict)]
    if secret:
        message = message.replace(secret, "[redacted]")
    reasons = {str(d.get("reason")) for d in details if d.get("@type", "").endswith("google.rpc.ErrorInfo")}
    retry = _retry_delay(details)
    if retry is None:
        retry = retry_after_seconds(headers)
    if gstatus == "UNAUTHENTICATED" or reasons & {"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"}:
        return upstream_error_for_status(401, message)       # our key was refused: a gateway fault
    if gstatus in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE") or (not gstatus and status == 400):
        code = "context_length_exceeded" if _TOO_LONG.search(message) else None
        return upstream_error_for_status(400, message, type="invalid_request_error", code=code)
    by_status = {"PERMISSION_DENIED": 403, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503,
                 "INTERNAL": 500, "UNKNOWN": 500, "ABORTED": 409, "CANCELLED": 500}
    if gstatus == "DEADLINE_EXCEEDED" or (not gstatus and status == 504):
        return UpstreamTimeout(message, retry_after=retry)
    return upstream_error_for_status(by_status.get(gstatus, status), message, retry_after=retry)


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """RetryInfo.retryDelay is a protobuf Duration in JSON: "38s", "1.5s"."""
    for d in details:
        if d.get("@type", "").endswith("google.rpc.RetryInfo"):
            raw = d.get("retryDelay")
            if isinstance(raw, str) and raw.endswith("s"):
                try:
                    return float(raw[:-1])
                except ValueError:
                    return None
    return None
