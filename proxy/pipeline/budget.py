"""Budgets: reserve a call's worst-case cost atomically before it runs, settle it after.

After auth and validation, before the cache. A call is under a budget through its key's `budget_id`
or, for a key without one, the request's `metadata.budget_id` (seed schema). Worst case = a bound on
the prompt (one token per byte) at the dearest input rate + `max_tokens` (or `budgets.default_max_tokens`)
x `n` at the output rate, over every target of the model. A hard budget that cannot take it answers 429
`insufficient_quota` with `x-should-retry: false`: no upstream call, no usage row. After the call (last
byte sent, error, or client gone) the real cost is settled and the rest of the reservation released.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable
from typing import Any

import msgspec

from proxy.context import ChatCall
from proxy.cost.accounting import Accounting
from proxy.cost.alerts import crossed
from proxy.cost.attribution import SCOPE_COLUMNS, budget_id_of, scope_value
from proxy.cost.periods import counter_ttl, iso, period_start
from proxy.cost.prices import usd
from proxy.cost.tokens import prompt_upper_bound
from proxy.errors import LedgerUnavailable, QuotaExceeded, Unavailable
from proxy.store.budgets import Budget
from proxy.store.usage import spent_since

log = logging.getLogger("proxy.budget")
_COMPLETION_TOKENS_MODELS = re.compile(r"^(o\d|gpt-5)")


class Hold(msgspec.Struct):
    budget: Budget
    counter: str
    amount: int


class Budgets:
    def __init__(self, acct: Accounting) -> None:
        self.acct = acct
        self.cfg = acct.bcfg
        self._warned: set[str] = set()

    def reserve(self, call: ChatCall) -> Awaitable[None] | None:
        bid = budget_id_of(call) if self.cfg.enabled else None
        if bid is None:
            return None
        call.budget_id = bid
        return self._reserve(call, bid)

    async def _reserve(self, call: ChatCall, bid: str) -> None:
        try:
            budget = await self.acct.budgets.get(bid)
        except Exception as e:
            log.error("ledger unreachable reading budget %r (%s)", bid, type(e).__name__)
            raise LedgerUnavailable() from None
        if budget is None:
            if bid not in self._warned:
                self._warned.add(bid)
                log.warning("budget %r is referenced but not defined: not enforced", bid)
            return
        amount = self.worst_case(call, budget.hard)
        now = time.time()
        start = period_start(budget.period, now)
        sv = scope_value(budget.scope, call)
        counter = f"{budget.id}|{sv.replace('|', '_')}|{int(start)}"
        col = SCOPE_COLUMNS.get(budget.scope)

        async def seed() -> int:
            try:
                return await spent_since(self.acct.ledger, budget.id, start, col, sv if col else None)
            except Exception as e:
                log.error("ledger unreachable reading spend of %r (%s)", budget.id, type(e).__name__)
                raise LedgerUnavailable() from None

        try:
            ok = await self.acct.reservations.reserve(counter, amount, budget.amount_nanos if budget.hard else None,
                                                      seed, counter_ttl(budget.period, start, now))
        except LedgerUnavailable:
            raise
        except Exception as e:
            if budget.hard:
                log.error("budget store unreachable (%s): refusing calls under hard budget %r", type(e).__name__, bid)
                raise Unavailable("The budget store is unreachable; try again shortly.") from None
            return
        if not ok:
            raise await self._refusal(budget, counter, amount)
        call.holds.append(Hold(budget, counter, amount))

    async def _refusal(self, budget: Budget, counter: str, amount: int) -> QuotaExceeded:
        """Which budget, its period, what is spent and reserved, and what this call would need (a refusal
        with nothing spent is the worst-case reservation's doing, and says so)."""
        try:
            live = await self.acct.reservations.read(counter)
        except Exception:
            live = None
        spent, reserved = live if live is not None else (None, None)
        state = (f"${usd(spent):.6f} spent and ${usd(reserved):.6f} reserved by calls in flight"
                 if spent is not None and reserved is not None else "spend unknown")
        return QuotaExceeded(
            f"Budget '{budget.id}' ({budget.period}, ${usd(budget.amount_nanos):.6f}) cannot take this request: "
            f"{state}; this request could cost up to ${usd(amount):.6f} (its prompt at one token per byte plus "
            f"max_tokens at the dearest target's rates). Lower max_tokens or raise the budget.")

    def worst_case(self, call: ChatCall, hard: bool) -> int:
        body = call.body
        prompt = prompt_upper_bound(body, call.endpoint)
        completion = 0
        if call.endpoint != "embeddings":
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            if not isinstance(limit, int):
                limit = self.cfg.default_max_tokens
                if hard and self.cfg.cap_max_tokens:
                    self._cap(call, limit)
            n = body.get("n")
            completion = limit * (n if isinstance(n, int) and n > 0 else 1)
        prices = self.acct.pricer.dearest(call.model)
        known = [p.worst_case(prompt, completion) for p in prices if p is not None]
        return max(known) if known else 0          # unpriced: nothing to reserve (recorded as unpriced)

    def _cap(self, call: ChatCall, limit: int) -> None:
        m = self.acct.pricer.model(call.model)
        names = [t.model for t in m.targets] if m else []
        field = "max_completion_tokens" if any(_COMPLETION_TOKENS_MODELS.match(n.rsplit("/", 1)[-1])
                                               for n in names) else "max_tokens"
        call.body[field] = limit

    async def settle(self, call: ChatCall, hold: Hold) -> None:
        """The real cost (priced at the call's end) replaces the worst case it reserved."""
        actual = call.cost_nanos or 0
        try:
            before, after = await self.acct.reservations.settle(hold.counter, hold.amount, actual)
        except Exception as e:
            log.error("budget settle failed for %s (%s)", hold.budget.id, type(e).__name__)
            return
        b = hold.budget
        for t in crossed(self.cfg.alerts.thresholds, b.amount_nanos, before, after):
            self.acct.alerter.notify(alert_event(b, hold.counter, t, after))


def alert_event(b: Budget, counter: str, threshold: float, spent: int) -> dict[str, Any]:
    _, sv, start = counter.rsplit("|", 2)
    return {"type": "budget.threshold", "budget_id": b.id, "scope": b.scope, "scope_value": sv,
            "period": b.period, "period_start": iso(float(start)), "threshold": threshold,
            "spent_usd": usd(spent), "amount_usd": usd(b.amount_nanos), "hard": b.hard, "ts": time.time()}
