"""Ingress-agnostic stages around the router. Each stage is `async (call, next) -> Reply`.

Order is policy (outermost first): auth -> rate limit -> budget -> cache -> cost -> router. A stage that
rejects a call raises a ProxyError before calling `next`, so nothing downstream runs or is charged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from proxy.context import ChatCall, Reply

Handler = Callable[[ChatCall], Awaitable[Reply]]


class Stage(Protocol):
    async def __call__(self, call: ChatCall, next: Handler) -> Reply: ...


def compose(stages: Sequence[Stage], endpoint: Handler,
            bind: Callable[[Stage, Handler], Handler] | None = None) -> Handler:
    """Fold the stages around the endpoint once, at start-up, so a request pays one call per stage.
    `bind` replaces the plain binding (tracing passes one that gives every stage a span)."""
    bind = bind or _bind
    handler = endpoint
    for stage in reversed(stages):
        handler = bind(stage, handler)
    return handler


def _bind(stage: Stage, nxt: Handler) -> Handler:
    async def run(call: ChatCall) -> Reply:
        return await stage(call, nxt)
    run.__qualname__ = f"{type(stage).__name__}.bound"
    return run
