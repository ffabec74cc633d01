"""The accounting stage: reserve before the call; at its end price, record, settle, in that order.

One module owns the money's order, so nothing depends on finalisers registered by other stages:
- before (a check, above the response cache so a hit is recorded too): reserve the call's worst-case
  cost under its budget (pipeline/budget.py), and keep the stream's relayed chunks for an estimate;
- at the end (`end`, called by the gateway's end step before the slot is released): price the call
  and write its one usage event (pipeline/cost.py), then settle each reservation to the real cost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from proxy.context import ChatCall
from proxy.cost.accounting import Accounting
from proxy.pipeline.budget import Budgets
from proxy.pipeline.cost import Recorder

log = logging.getLogger("proxy.accounting")


class AccountingStage:
    name = "accounting"     # its span: the budget reservation (ledger or Redis I/O)

    def __init__(self, acct: Accounting) -> None:
        self.acct = acct
        self.budgets = Budgets(acct)
        self.recorder = Recorder(acct)
        self._priced = self.recorder.priced        # one bound method, not one per call

    def check(self, call: ChatCall) -> Awaitable[None] | None:
        if call.stream:
            call.relayed = []                      # the relay appends what it sends (an estimate reads it)
        else:
            call.on_reply(self._priced)
        return self.budgets.reserve(call)

    def end(self, call: ChatCall) -> Awaitable[None] | None:
        """Price -> record -> settle. Synchronous for a call without a budget whose usage is known."""
        pending = self.recorder.record(call)
        if pending is None and not call.holds:
            return None
        return self._end(call, pending)

    async def _end(self, call: ChatCall, pending: Awaitable[None] | None) -> None:
        if pending is not None:
            try:
                await pending
            except Exception:
                log.exception("usage record failed for %s", call.request_id)
        for hold in call.holds:
            await self.budgets.settle(call, hold)
        call.holds.clear()
