"""Pricing and the usage event: what the accounting stage does at a call's end (pipeline/accounting.py).

A cache hit is recorded too: cost 0, and what it saved. Calls that never reached a provider or the
cache (bad input, auth, budget refusals, unknown models) record nothing. Non-streamed answers get
`x-llm-cost`, `x-llm-prompt-tokens`, `x-llm-completion-tokens` headers. When the provider reported no
usage (or a stream was cut before its usage chunk), tokens are counted from the request and the text
relayed so far, off the event loop, and the event is marked `estimated`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from proxy.context import ChatCall, Reply, Usage
from proxy.cost.accounting import Accounting
from proxy.cost.attribution import batch_id_of, budget_id_of, source_of, team_of
from proxy.cost.periods import utc_day
from proxy.cost.prices import usd_text
from proxy.cost.tokens import reply_text, streamed_text
from proxy.store.usage import UsageEvent

log = logging.getLogger("proxy.cost")


def _missing(u: Usage | None) -> bool:
    return u is None or (u.estimated and u.prompt_tokens == 0 and u.completion_tokens == 0)


class Recorder:
    """Prices a call and writes its one usage event; called by the accounting stage only."""

    def __init__(self, acct: Accounting) -> None:
        self.acct = acct
        self.batch_discount = acct.config.batches.discount     # model -> share off a batch line's price

    def priced(self, call: ChatCall, reply: Reply) -> None:
        """A whole answer carries its tokens and cost in headers (a stream's are known only at its end)."""
        if reply.chunks is None:
            call.reply_body = reply.body
            u = call.usage
            if reply.status == 200 and u is not None and not _missing(u):
                cost, saved = self._price(call, u)
                call.cost_nanos, call.saved_nanos = cost, saved
                call.priced = u
                h = call.response_headers
                h["x-llm-prompt-tokens"] = str(u.prompt_tokens)
                h["x-llm-completion-tokens"] = str(u.completion_tokens)
                if cost is not None:
                    h["x-llm-cost"] = usd_text(cost)

    def _price(self, call: ChatCall, usage: Usage | None) -> tuple[int | None, int]:
        """(cost, saved) in nano-dollars. A cache hit costs 0 and saves what the call would have cost."""
        price = self.acct.pricer.price(call.model, call.target)
        full = price.cost(usage) if price is not None and usage is not None else None
        if call.cache == "hit":
            return 0, full or 0
        if full is None and price is not None:
            full = 0                          # priced, no tokens (e.g. an upstream error)
        if full and call.ingress == "batch" and self.batch_discount:
            off = self.batch_discount.get(call.public_model, self.batch_discount.get("*", 0.0))
            full = round(full * (1.0 - off))
        return full, 0

    def record(self, call: ChatCall) -> Awaitable[None] | None:
        """Price the call and write its event. Synchronous unless tokens must be counted (off the event
        loop): most calls pay no coroutine. Returns what to await, if anything."""
        cached = call.cache == "hit"
        if call.attempts == 0 and not cached and call.ingress != "batch":
            return None                       # never reached a provider: nothing spent, nothing to record
        # (a batch line leaves its one event whatever became of it: the batch's accounts must add up)
        if _missing(call.usage) and not cached:
            return self._record_estimated(call)
        self._write(call, call.usage)
        return None

    async def _record_estimated(self, call: ChatCall) -> None:
        usage = await self._estimate(call)
        if usage is not None:
            call.usage = usage                # the rate limiter settles its tokens to this too
        self._write(call, usage)

    def _write(self, call: ChatCall, usage: Usage | None) -> None:
        if call.priced is None or call.priced is not usage:
            call.cost_nanos, call.saved_nanos = self._price(call, usage)
        self.acct.writer.add(self._event(call, usage, call.cost_nanos, call.saved_nanos, call.status,
                                         call.error))

    async def _estimate(self, call: ChatCall) -> Usage | None:
        """Count what was sent and what came back. Nothing came back from a failed call: no tokens."""
        tap = call.relayed
        got = streamed_text(tap) if tap else reply_text(call.reply_body)
        if not got and call.status >= 400 and call.status != 499:
            return None
        model = call.target.model if call.target is not None else call.model
        tok = self.acct.tokenizer

        def count() -> Usage:
            p = tok.count_prompt(model, call.body, call.endpoint)
            c = tok.count(model, got)
            return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c, estimated=True)

        return await asyncio.to_thread(count)

    def _event(self, call: ChatCall, usage: Usage | None, cost: int | None, saved: int, status: int,
               error: str | None) -> UsageEvent:
        now = time.time()
        body, target = call.body, call.target
        stype, sid = source_of(call)
        opts = body.get("options")
        u = usage or _NO_USAGE
        started, first = call.started, call.first_byte_at
        return UsageEvent(                    # positional, in field order (see UsageEvent)
            call.request_id, now, utc_day(now), stype, sid, team_of(call), call.endpoint, call.model,
            target.provider if target is not None else None, target.model if target is not None else None,
            call.key.id if call.key is not None else None, call.budget_id or budget_id_of(call),
            u.prompt_tokens, u.completion_tokens, u.cached_tokens, cost, saved,
            call.ingress in ("batch", "job") or (isinstance(opts, dict) and bool(opts.get("async"))),
            call.cache == "hit", batch_id_of(call), call.stream, status or 500, error,
            round((time.monotonic() - started) * 1000, 3),
            round((first - started) * 1000, 3) if first else None, u.estimated, call.custom_id, call.ingress)


_NO_USAGE = Usage()
