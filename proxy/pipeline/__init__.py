"""Ingress-agnostic stages around the router.

Order is policy (outermost first): auth -> validate -> rate limit -> budget -> cost -> cache -> router.
A stage that rejects a call raises a ProxyError before the call goes on, so nothing after it runs or is
charged. Two kinds:

- a `Check` acts only before the call goes on (authenticate, validate, take a rate-limit slot, reserve
  budget); what it must do afterwards it registers with `call.on_reply` (the reply is ready) or
  `call.on_finish` (its last byte went out);
- a `Stage` wraps the rest, `async (call, next) -> Reply`, when it needs the reply (price it, store it).

Why two: every coroutine frame still on the stack is resumed again at each I/O wait while the provider
answers (~2 µs a frame and request, measured), so a stage that has nothing to do after `next` should not
sit there. Consecutive checks run one after another in a single frame.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from proxy.context import ChatCall, Reply

Handler = Callable[[ChatCall], Awaitable[Reply]]


class Stage(Protocol):
    """`next` is passed by keyword: a stage's second parameter must be named `next`."""

    async def __call__(self, call: ChatCall, next: Handler) -> Reply: ...


@runtime_checkable
class Check(Protocol):
    """Before the call goes on; a coroutine, or None when it finished at once (no await needed)."""

    def check(self, call: ChatCall) -> Awaitable[None] | None: ...


StageBinder = Callable[[Stage, Handler], Handler]
CheckBinder = Callable[[Sequence[Check], Handler], Handler]


def compose(stages: Sequence[Stage | Check], endpoint: Handler, bind: StageBinder | None = None,
            bind_checks: CheckBinder | None = None) -> Handler:
    """Fold the stages around the endpoint once, at start-up. `bind` / `bind_checks` replace the plain
    bindings (tracing passes ones that mark when each stage starts and ends)."""
    handler = endpoint
    pending: list[Check] = []
    for stage in reversed(stages):
        if isinstance(stage, Check):
            pending.insert(0, stage)
            continue
        if pending:
            handler = (bind_checks or run_checks)(pending, handler)
            pending = []
        handler = (bind or _bind)(stage, handler)
    if pending:
        handler = (bind_checks or run_checks)(pending, handler)
    return handler


def _bind(stage: Stage, nxt: Handler) -> Handler:
    """`partial` calls the stage straight away: no wrapper coroutine per stage and request."""
    return functools.partial(stage, next=nxt)


def run_checks(checks: Sequence[Check], nxt: Handler) -> Handler:
    fns = tuple(c.check for c in checks)

    async def checked(call: ChatCall) -> Reply:
        for fn in fns:
            pending = fn(call)
            if pending is not None:
                await pending
        return call.replied(await nxt(call))

    return checked
