"""The cost stage: price each call and record one usage event, after the last byte (or the client left).

It sits just above the response cache, so a hit is recorded too: cost 0, and what it saved. Calls that
never reached a provider or the cache (bad input, auth, budget refusals, unknown models) record nothing.
Non-streamed answers get `x-llm-cost`, `x-llm-prompt-tokens`, `x-llm-completion-tokens` headers. When the
provider reported no usage (or a stream was cut before its usage chunk), tokens are counted from the
request and the text relayed so far, off the event loop, and the event is marked `estimated`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from proxy.context import ChatCall, Reply, Usage
from proxy.cost.accounting import Accounting
from proxy.cost.periods import utc_day
from proxy.cost.prices import usd_text
from proxy.cost.tokens import reply_text, streamed_text
from proxy.pipeline.budget import budget_id_of, source_of, team_of
from proxy.store.usage import UsageEvent

log = logging.getLogger("proxy.cost")
TAP = "relay_tap"          # call.extras key: the relay appends the client-bound SSE bytes here
DONE_MARK = b"data: [DONE]"


def _missing(u: Usage | None) -> bool:
    return u is None or (u.estimated and u.prompt_tokens == 0 and u.completion_tokens == 0)


class CostStage:
    traced = False          # no span of its own: µs of bookkeeping (see Tracing.bind_checks)

    def __init__(self, acct: Accounting) -> None:
        self.acct = acct
        self._record_fn = self._record          # one bound method each, not one per call
        self._priced_fn = self._priced

    def check(self, call: ChatCall) -> None:
        """Before the cache, so a hit is recorded too; the work is all after the reply."""
        if call.stream:
            call.extras[TAP] = []
        else:
            call.on_reply(self._priced_fn)
        call.on_finish(self._record_fn)

    def _priced(self, call: ChatCall, reply: Reply) -> None:
        """A whole answer carries its tokens and cost in headers (a stream's are known only at its end)."""
        if reply.chunks is None:
            call.extras["reply_body"] = reply.body
            u = call.usage
            if reply.status == 200 and u is not None and not _missing(u):
                cost, saved = self._price(call, u)
                call.extras["priced"] = (u, cost, saved)
                h = call.response_headers
                h["x-llm-prompt-tokens"] = str(u.prompt_tokens)
                h["x-llm-completion-tokens"] = str(u.completion_tokens)
                if cost is not None:
                    h["x-llm-cost"] = usd_text(cost)

    def _price(self, call: ChatCall, usage: Usage | None) -> tuple[int | None, int]:
        """(cost, saved) in nano-dollars. A cache hit costs 0 and saves what the call would have cost."""
        price = self.acct.pricer.price(call.model, call.target)
        full = price.cost(usage) if price is not None and usage is not None else None
        if call.extras.get("cached"):
            return 0, full or 0
        if full is None and price is not None:
            full = 0                          # priced, no tokens (e.g. an upstream error)
        return full, 0

    def _record(self, call: ChatCall) -> Awaitable[None] | None:
        """Synchronous unless tokens must be counted (off the event loop): most calls pay no coroutine."""
        extras = call.extras
        cached = bool(extras.get("cached"))
        if call.attempts == 0 and not cached:
            return None                       # never reached a provider: nothing spent, nothing to record
        usage = call.usage
        tap: list[bytes] | None = extras.get(TAP)
        status, error = call.status, call.error
        if call.stream and error is None and tap is not None and not cached:
            tail = tap[-1] if tap else b""
            if DONE_MARK not in tail and not any(DONE_MARK in c for c in tap[-3:]):
                status, error = 499, "stream ended early (client disconnected)"
        if _missing(usage) and not cached:
            return self._record_estimated(call, tap, status, error)
        self._write(call, usage, status, error)
        return None

    async def _record_estimated(self, call: ChatCall, tap: list[bytes] | None, status: int,
                                error: str | None) -> None:
        self._write(call, await self._estimate(call, tap, status), status, error)

    def _write(self, call: ChatCall, usage: Usage | None, status: int, error: str | None) -> None:
        done = call.extras.get("priced")
        cost, saved = done[1:] if done is not None and done[0] is usage else self._price(call, usage)
        call.extras["cost_nanos"] = cost
        self.acct.writer.add(self._event(call, usage, cost, saved, status, error))

    async def _estimate(self, call: ChatCall, tap: list[bytes] | None, status: int) -> Usage | None:
        """Count what was sent and what came back. Nothing came back from a failed call: no tokens."""
        got = streamed_text(tap) if tap else reply_text(call.extras.get("reply_body"))
        if not got and status >= 400 and status != 499:
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
        body, extras, target = call.body, call.extras, call.target
        stype, sid = source_of(call)
        opts, md = body.get("options"), body.get("metadata")
        batch = ((opts.get("batch_id") if isinstance(opts, dict) else None)
                 or (md.get("batch_id") if isinstance(md, dict) else None) or extras.get("batch_id"))
        u = usage or _NO_USAGE
        started, first = call.started, call.first_byte_at
        return UsageEvent(                    # positional, in field order (see UsageEvent)
            call.request_id, now, utc_day(now), stype, sid, team_of(call), call.endpoint, call.model,
            target.provider if target is not None else None, target.model if target is not None else None,
            getattr(call.key, "id", None), extras.get("budget_id") or budget_id_of(call),
            u.prompt_tokens, u.completion_tokens, u.cached_tokens, cost, saved,
            call.ingress == "batch" or (isinstance(opts, dict) and bool(opts.get("async"))),
            bool(extras.get("cached")), batch if isinstance(batch, str) else None, call.stream, status or 500, error,
            round((time.monotonic() - started) * 1000, 3),
            round((first - started) * 1000, 3) if first else None, u.estimated)


_NO_USAGE = Usage()
