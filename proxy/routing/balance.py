"""Order a model's targets for one request: priority groups first, then the model's strategy inside each."""

from __future__ import annotations

import random
from collections.abc import Callable

from proxy.config import ModelConfig, Target
from proxy.routing.health import Health


def ordered(model: ModelConfig, health: Health, price: Callable[[Target], float | None] | None = None,
            rng: random.Random | None = None) -> list[Target]:
    if len(model.targets) == 1:
        return model.targets
    groups: dict[int, list[Target]] = {}
    for i, t in enumerate(model.targets):
        groups.setdefault(t.priority if t.priority is not None else i, []).append(t)
    out: list[Target] = []
    for prio in sorted(groups):
        group = groups[prio]
        if len(group) > 1:
            group = _arrange(group, model.strategy, health, price, rng or random)
        out.extend(group)
    return out


def _arrange(group: list[Target], strategy: str, health: Health,
             price: Callable[[Target], float | None] | None, rng) -> list[Target]:
    if strategy == "ordered":
        return group
    if strategy == "least_inflight":
        return sorted(group, key=lambda t: (health.of(t).inflight, rng.random()))
    if strategy == "latency":
        # Unmeasured targets first (0.0), so every target gets a latency sample.
        return sorted(group, key=lambda t: (health.of(t).ewma_ms, rng.random()))
    if strategy == "cost" and price is not None:
        return sorted(group, key=lambda t: (p if (p := price(t)) is not None else float("inf"), rng.random()))
    # weighted random without replacement: the first pick follows the weights, the rest are fallbacks
    pool, out = list(group), []
    while pool:
        total = sum(max(t.weight, 0.0) for t in pool)
        if total <= 0:
            out.extend(pool)
            break
        r, acc = rng.random() * total, 0.0
        for t in pool:
            acc += max(t.weight, 0.0)
            if r < acc:
                out.append(t)
                pool.remove(t)
                break
        else:
            out.append(pool.pop())
    return out
