"""Anthropic Message / error bodies -> OpenAI chat.completion / error envelope. Shapes follow the SDK's
`anthropic.types.Message`, `Usage` and `shared.ErrorResponse`."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.context import Usage
from proxy.errors import UpstreamError, UpstreamTimeout, upstream_error_for_status

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}

# Anthropic error type -> the HTTP status its docs give it (used for in-stream errors, which have none).
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                "conflict_error": 409, "rate_limit_error": 429, "api_error": 500, "timeout_error": 504,
                "overloaded_error": 529}


USAGE_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")


def merge_usage(acc: dict[str, int], u: Any) -> Usage | None:
    """A stream's usage so far: message_start carries the input counts, message_delta the cumulative output
    (and maybe input); each event's counts replace the earlier ones. None: `u` carried nothing."""
    if not isinstance(u, dict):
        return None
    for k in USAGE_KEYS:
        v = u.get(k)
        if isinstance(v, int):
            acc[k] = v
    return usage_from_anthropic(acc)


def usage_from_anthropic(u: Any) -> Usage:
    """prompt_tokens counts every input token: uncached, read from the cache, and written to it."""
    if not isinstance(u, dict):
        return Usage(estimated=True)
    fresh = int(u.get("input_tokens") or 0)
    read = int(u.get("cache_read_input_tokens") or 0)
    write = int(u.get("cache_creation_input_tokens") or 0)
    out = int(u.get("output_tokens") or 0)
    prompt = fresh + read + write
    return Usage(prompt_tokens=prompt, completion_tokens=out, total_tokens=prompt + out, cached_tokens=read,
                 cache_write_tokens=write)


def finish_reason(stop_reason: Any, answered: bool, other_tools: bool) -> str | None:
    """`answered`: the model called the response_format tool; its JSON is the reply, so it ends with stop."""
    if stop_reason == "tool_use" and answered and not other_tools:
        return "stop"
    return FINISH.get(stop_reason, "stop" if stop_reason else None)


def message_from_wire(data: dict[str, Any], answer: str | None) -> tuple[dict[str, Any], str | None]:
    """(OpenAI message, finish_reason) for an Anthropic `Message`."""
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    answered = False
    for block in data.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "tool_use":
            args = orjson.dumps(block.get("input") or {}).decode()
            if answer is not None and block.get("name") == answer:
                text.append(args)
                answered = True
            else:
                calls.append({"id": block.get("id"), "type": "function",
                              "function": {"name": block.get("name"), "arguments": args}})
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        # redacted_thinking and server-tool blocks have no OpenAI form.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return message, finish_reason(data.get("stop_reason"), answered, bool(calls))


def error_from_body(provider: str, status: int, body: bytes, retry_after: float | None) -> UpstreamError:
    """Read `{"type": "error", "error": {"type", "message"}}` structurally; fall back to the HTTP status."""
    etype, message = None, f"provider '{provider}' answered HTTP {status}"
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        etype = err.get("type") if isinstance(err.get("type"), str) else None
        if isinstance(err.get("message"), str) and err["message"]:
            message = err["message"]
    return error_for_type(etype, message, status, retry_after)


def error_for_type(etype: str | None, message: str, status: int | None,
                   retry_after: float | None = None) -> UpstreamError:
    """Map an Anthropic error type (or, if unknown, the HTTP status) to the OpenAI-style UpstreamError."""
    if etype == "invalid_request_error":
        # Anthropic has no error code for an over-long prompt; its documented message starts with
        # "prompt is too long" (e.g. "prompt is too long: 209353 tokens > 199999 maximum"). This is the one
        # place we match on message text, to give clients OpenAI's `context_length_exceeded`.
        code = "context_length_exceeded" if message.lower().startswith("prompt is too long") else None
        return upstream_error_for_status(400, message, type="invalid_request_error", code=code)
    if etype == "request_too_large":
        return upstream_error_for_status(413, message, type="invalid_request_error", code="request_too_large")
    if etype == "billing_error":
        # Our account with the provider cannot pay: a gateway fault another target may not share.
        return UpstreamError(message, status=502, type="upstream_error", code="upstream_billing_error")
    if etype == "timeout_error":
        return UpstreamTimeout(message)
    if etype == "api_error":
        return upstream_error_for_status(500, message)
    mapped = ERROR_STATUS.get(etype or "")
    return upstream_error_for_status(mapped or status or 502, message, retry_after=retry_after)
