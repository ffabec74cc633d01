"""The schema's input types, and their conversion to what the REST routes take: an OpenAI chat body,
a key-create body, a usage query. Validation stays where REST does it (the pipeline, the key service)."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.scalars import JSON

from proxy.api.graphql.auth import BAD_USER_INPUT, GQLError
from proxy.errors import ProxyError
from proxy.keyservice import parse_time
from proxy.store.usage import UsageQuery


@strawberry.input
class MessageInput:
    role: str
    content: JSON | None = strawberry.field(default=None, description="A string, or an array of content parts.")
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: JSON | None = None


@strawberry.input
class RequestMetadata:
    """The seed's request metadata: who the call is billed to and how urgent it is."""

    source_id: str | None = None
    source_type: str | None = None
    priority: int | None = None
    budget_id: str | None = None


@strawberry.input
class ChatInput:
    model: str
    messages: list[MessageInput]
    temperature: float | None = None
    max_tokens: int | None = None
    tools: JSON | None = None
    response_format: JSON | None = None
    stop: list[str] | None = None
    seed: int | None = None
    cache: bool | None = strawberry.field(default=None, description="Opt in to (or out of) the response cache.")
    metadata: RequestMetadata | None = None
    extra: JSON | None = strawberry.field(default=None, description="Any other OpenAI chat field, as is.")


_MESSAGE_FIELDS = (("content", "content"), ("name", "name"), ("tool_call_id", "tool_call_id"),
                   ("tool_calls", "tool_calls"))
_OPTIONS = ("temperature", "max_tokens", "tools", "response_format", "stop", "seed", "cache")


def chat_body(inp: ChatInput, *, stream: bool) -> dict[str, Any]:
    """ChatInput -> the OpenAI chat body REST would receive (the pipeline validates it the same way)."""
    body: dict[str, Any] = {}
    if inp.extra is not None:
        if not isinstance(inp.extra, dict):
            raise GQLError("Invalid 'extra': expected an object of OpenAI chat fields.", BAD_USER_INPUT,
                           param="extra")
        body.update(inp.extra)
    messages = []
    for m in inp.messages:
        msg: dict[str, Any] = {"role": m.role}
        for attr, name in _MESSAGE_FIELDS:
            v = getattr(m, attr)
            if v is not None:
                msg[name] = v
        if "content" not in msg and m.role != "assistant":
            msg["content"] = ""
        messages.append(msg)
    body["model"], body["messages"] = inp.model, messages
    for name in _OPTIONS:
        v = getattr(inp, name)
        if v is not None:
            body[name] = v
    if inp.metadata is not None:
        md = {k: v for k in ("source_id", "source_type", "priority", "budget_id")
              if (v := getattr(inp.metadata, k)) is not None}
        if md:
            body["metadata"] = {**(body.get("metadata") or {}), **md}
    body["stream"] = stream
    if stream:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    else:
        body.pop("stream_options", None)
    return body


@strawberry.input
class UsageFilter:
    since: str | None = strawberry.field(default=None, description="Unix seconds or ISO 8601.")
    until: str | None = None
    model: str | None = None
    key_id: str | None = None
    source_id: str | None = None
    budget_id: str | None = None
    request_id: str | None = None


def _time(raw: str | None, name: str) -> float | None:
    if raw is None:
        return None
    try:
        try:
            return parse_time(float(raw), name)
        except ValueError:
            return parse_time(raw, name)
    except ProxyError as e:
        raise GQLError(e.message, BAD_USER_INPUT, param=f"filter.{name}") from None


def usage_query(f: UsageFilter | None, own: str | None, *, before: int | None, limit: int) -> UsageQuery:
    """The same UsageQuery /v1/usage builds; a virtual key's own id always wins over `keyId`."""
    f = f or UsageFilter()
    return UsageQuery(request_id=f.request_id, key_id=own if own is not None else f.key_id,
                      source_id=f.source_id, model=f.model, budget_id=f.budget_id,
                      since=_time(f.since, "since"), until=_time(f.until, "until"), before_id=before, limit=limit)


@strawberry.input
class KeyInput:
    name: str | None = None
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_id: str | None = None
    source_id: str | None = None
    source_type: str | None = None
    metadata: JSON | None = None
    expires_at: str | None = strawberry.field(default=None, description="Unix seconds or ISO 8601.")


def key_body(inp: KeyInput) -> dict[str, Any]:
    """KeyInput -> the body POST /admin/keys takes (the key service validates both the same way)."""
    out = {k: getattr(inp, k) for k in ("name", "models", "rpm", "tpm", "max_concurrency", "budget_id",
                                         "source_id", "source_type", "metadata") if getattr(inp, k) is not None}
    if inp.expires_at is not None:
        raw: Any = inp.expires_at
        try:
            raw = float(raw)
        except ValueError:
            pass
        out["expires_at"] = raw
    return out
