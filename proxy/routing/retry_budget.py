"""Envoy's retry budget: retries in flight to a target are capped at a share of its requests in flight.

Without it a failing upstream gets every call twice (or `retries + 1` times) just when it can least take
it. A call over the budget gets the error it had, without a retry; fallback to other targets is unchanged.
"""

from __future__ import annotations

from proxy.config import RetryBudget as RetryBudgetConfig
from proxy.routing.health import TargetState


class RetryBudget:
    __slots__ = ("min_retries", "ratio", "retrying")

    def __init__(self, config: RetryBudgetConfig) -> None:
        self.ratio, self.min_retries = config.ratio, config.min_retries
        self.retrying: dict[str, int] = {}      # target key -> calls retrying it now

    def take(self, st: TargetState) -> bool:
        """May one more call retry this target now? If so it counts until `give`."""
        n = self.retrying.get(st.key, 0)
        if n >= max(self.min_retries, self.ratio * (st.inflight + n)):
            return False
        self.retrying[st.key] = n + 1
        return True

    def give(self, st: TargetState) -> None:
        n = self.retrying.get(st.key, 0) - 1
        if n > 0:
            self.retrying[st.key] = n
        else:
            self.retrying.pop(st.key, None)
