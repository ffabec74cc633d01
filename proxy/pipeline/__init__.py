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


def compose(stages: Sequence[Stage], endpoint: Handler) -> Handler:
    """Fold the stages around the endpoint once, at start-up, so a request pays one call per stage."""
    handler = endpoint
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage, nxt: Handler) -> Handler:
    async def run(call: ChatCall) -> Reply:
        return await stage(call, nxt)
    run.__qualname__ = f"{type(stage).__name__}.bound"
    return run
