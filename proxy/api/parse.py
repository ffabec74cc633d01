"""Request parsing and validation shared by every ingress: body -> ChatCall; bad input -> 400 with `param`."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.context import ChatCall
from proxy.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "cookie", "proxy-authorization"})
# Body fields some SDKs and gateways accept to pick the upstream URL or credentials per request. A client
# must never choose them: refused, not forwarded.
ROUTING_FIELDS = frozenset({
    "api_base", "base_url", "api_key", "api_version", "api_type", "azure_endpoint", "azure_deployment",
    "azure_ad_token", "azure_ad_token_provider", "organization", "project", "custom_llm_provider",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_region_name", "aws_profile_name",
    "aws_role_name", "aws_web_identity_token", "aws_bedrock_runtime_endpoint", "vertex_project",
    "vertex_location", "vertex_credentials", "vertex_ai_project", "vertex_ai_location", "endpoint",
    "endpoint_url", "proxy", "proxy_url", "extra_headers", "headers",
})
MAX_N = 128


def decode_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request. (HINT: This likely means you "
                             "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
                             code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def credential_from(headers: Any) -> str | None:
    """`Authorization: Bearer` (OpenAI SDK), `x-api-key` (Anthropic SDK) or `api-key` (Azure SDK)."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return headers.get("x-api-key") or headers.get("api-key") or None


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise InvalidRequest(f"Invalid '{name}': expected a number between {lo:g} and {hi:g}.", param=name,
                             code="invalid_value" if isinstance(v, int | float) else "invalid_type")


def _int_within(body: dict[str, Any], name: str, hi: int) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
        raise InvalidRequest(f"Invalid '{name}': expected an integer from 1 to {hi}.", param=name,
                             code="invalid_value" if isinstance(v, int) and not isinstance(v, bool)
                             else "invalid_type")


def refuse_routing_fields(body: dict[str, Any]) -> None:
    """A client may not pick the upstream URL or credentials (`api_base`, `api_key`, ...)."""
    if not ROUTING_FIELDS.isdisjoint(body):
        name = min(ROUTING_FIELDS.intersection(body))
        raise InvalidRequest(f"Unrecognized request argument supplied: '{name}'. The upstream URL and "
                             f"credentials are the gateway's configuration, not the request's.", param=name,
                             code="unsupported_parameter")


def _apply_seed_options(body: dict[str, Any]) -> None:
    """The seed's request schema nests temperature/max_tokens/stream under `options`: lift them."""
    opts = body.get("options")
    if opts is None:
        return
    if not isinstance(opts, dict):
        raise InvalidRequest("Invalid 'options': expected an object.", param="options", code="invalid_type")
    for name in ("temperature", "max_tokens", "stream"):
        if name in opts and name not in body:
            body[name] = opts[name]


def chat_call(body: dict[str, Any], headers: Any, *, ingress: str = "rest",
              request_id: str | None = None) -> ChatCall:
    """Build the call without judging it: validation is a pipeline stage, after auth, so an anonymous
    caller learns nothing but 401."""
    model = body.get("model")
    stream = body.get("stream")
    given: dict[str, Any] = {"request_id": request_id} if request_id else {}
    return ChatCall(
        body=body, model=model if isinstance(model, str) else "", stream=stream is True,
        credential=credential_from(headers), ingress=ingress,
        headers={low: v for k, v in headers.items() if (low := k.lower()) not in CREDENTIAL_HEADERS}, **given,
    )


def validate_chat(call: ChatCall, max_output_tokens: int = 262_144) -> None:
    """Raise a 400 naming the first bad `param`; normalise the seed's `options` into top-level fields."""
    body = call.body
    refuse_routing_fields(body)
    _apply_seed_options(body)
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Invalid 'model': expected a non-empty string.", param="model", code="invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages",
                             code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("Invalid 'messages': expected a non-empty array.", param="messages",
                             code="invalid_type" if not isinstance(messages, list) else "empty_array")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequest(f"Invalid 'messages[{i}]': expected an object.", param=f"messages[{i}]",
                                 code="invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"Invalid 'messages[{i}].role': expected one of {', '.join(sorted(ROLES))}.",
                                 param=f"messages[{i}].role", code="invalid_value")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(f"Invalid 'messages[{i}].content': expected a string or an array of parts.",
                                 param=f"messages[{i}].content", code="invalid_type")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("Invalid 'stream': expected a boolean.", param="stream", code="invalid_type")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _int_within(body, "max_tokens", max_output_tokens)
    _int_within(body, "max_completion_tokens", max_output_tokens)
    _int_within(body, "n", MAX_N)
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise InvalidRequest("Invalid 'stream_options': expected an object.", param="stream_options",
                             code="invalid_type")
    call.model, call.stream = model, stream


def validate_embeddings(call: ChatCall) -> None:
    body = call.body
    refuse_routing_fields(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model",
                             code="missing_required_parameter" if model is None else "invalid_type")
    inp = body.get("input")
    ok = (isinstance(inp, str) and inp != "") or (
        isinstance(inp, list) and inp and all(
            (isinstance(x, str) and x != "") or (isinstance(x, int) and not isinstance(x, bool))
            or (isinstance(x, list) and all(isinstance(t, int) for t in x)) for x in inp))
    if not ok:
        raise InvalidRequest("Invalid 'input': expected a non-empty string or array of strings or token arrays.",
                             param="input", code="invalid_type" if inp is not None else "missing_required_parameter")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise InvalidRequest("Invalid 'encoding_format': expected 'float' or 'base64'.", param="encoding_format",
                             code="invalid_value")
    call.model, call.stream = model, False
