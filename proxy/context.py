"""ChatCall: what every pipeline stage sees, whichever ingress (REST, GraphQL, WebSocket, batch) built it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from random import getrandbits
from typing import Any

import msgspec


class Usage(msgspec.Struct, omit_defaults=True, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0          # prompt tokens served from the provider's prompt cache
    cache_write_tokens: int = 0     # prompt tokens written to the provider's prompt cache
    estimated: bool = False         # counted by us, not reported by the provider

    def openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens or self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens or self.cache_write_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
            if self.cache_write_tokens:
                out["cache_write_tokens"] = self.cache_write_tokens
        return out


def usage_from_openai(u: dict | None) -> Usage | None:
    if not isinstance(u, dict):
        return None
    details = u.get("prompt_tokens_details") or {}
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    return Usage(                         # positional: prompt, completion, total, cached, cache write
        prompt,
        completion,
        int(u.get("total_tokens") or prompt + completion),
        int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
        # top level (ours), or inside prompt_tokens_details (OpenRouter's usage accounting)
        int(u.get("cache_write_tokens") or (details.get("cache_write_tokens") if
                                            isinstance(details, dict) else 0) or 0),
    )


@dataclass(slots=True)
class Reply:
    """What the pipeline answers: a whole JSON body, or SSE bytes to relay as they come."""

    status: int = 200
    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass(slots=True)
class ChatCall:
    """One request's state. Stages read and annotate it; none of them sees an HTTP object."""

    body: dict[str, Any]
    model: str
    stream: bool
    credential: str | None = None          # the key the client presented (never logged, never forwarded)
    endpoint: str = "chat.completions"     # or "embeddings", ...
    ingress: str = "rest"
    request_id: str = field(default_factory=lambda: f"req_{getrandbits(96):024x}")
    started: float = field(default_factory=time.monotonic)
    headers: dict[str, str] = field(default_factory=dict)   # request headers, lower-case names, minus credentials
    key: Any = None                        # the authenticated key (master or virtual)
    target: Any = None                     # the routed target, once the router picked one
    attempts: int = 0
    usage: Usage | None = None
    first_byte_at: float | None = None
    status: int = 0
    error: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    error_headers: dict[str, str] | None = None   # of those, the ones an error answer carries too (limits)
    extras: dict[str, Any] = field(default_factory=dict)     # per-stage scratch space
    trace: Any = None                      # the trace record while sampled (proxy/telemetry/tracing.py)
    _finalizers: list[Callable[[ChatCall], Awaitable[None] | None]] = field(default_factory=list)
    _reply_hooks: list[Callable[[ChatCall, Reply], None]] | None = None

    def on_finish(self, fn: Callable[[ChatCall], Awaitable[None] | None]) -> None:
        """Run `fn` after the last byte went out (or the client left): accounting, settling reservations."""
        self._finalizers.append(fn)

    def on_reply(self, fn: Callable[[ChatCall, Reply], None]) -> None:
        """For a check: run `fn` when the reply is ready, before it is written (e.g. to add headers)."""
        if self._reply_hooks is None:
            self._reply_hooks = []
        self._reply_hooks.append(fn)

    def replied(self, reply: Reply) -> Reply:
        hooks = self._reply_hooks
        if hooks:
            for fn in reversed(hooks):
                fn(self, reply)
        return reply

    async def finish(self) -> None:
        fns, self._finalizers = self._finalizers, []
        for fn in reversed(fns):
            res = fn(self)
            if res is not None:
                await res
