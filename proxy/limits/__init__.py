"""Rate limits and quotas: the level and decision types, and the `Limiter` protocol both backends implement.

A request is checked against every level that applies to it (global, provider, model, key, source). Each
level may limit requests per minute and tokens per minute (GCRA: a bucket of `limit` that refills
continuously, so `rpm: 60` admits a burst of 60, then one a second) and requests in flight. All levels are
checked first and taken only if every one allows: one atomic step, so a denied request consumes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

EPS = 1e-6          # float slack so a burst of exactly `limit` fits
WINDOW = 60.0       # rpm/tpm are per minute


@dataclass(slots=True, frozen=True)
class Level:
    """One level as it applies to a request. 0 means "not limited" for rpm, tpm and concurrency."""

    name: str               # for headers, errors and /v1/quota: "global", "model:gpt", "key:k_1", ...
    key: str                # storage key (under the configured prefix)
    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0
    reserve: float = 0.0    # share of each limit kept for high-priority traffic
    fail_closed: bool = False


@dataclass(slots=True)
class LevelState:
    """What is left at one level after a request was admitted (or, for a peek, right now)."""

    level: Level
    remaining_requests: int = -1    # -1: the level has no such limit
    reset_requests: float = 0.0     # seconds until the request bucket is full again
    remaining_tokens: int = -1
    reset_tokens: float = 0.0
    inflight: int = -1


@dataclass(slots=True)
class Decision:
    allowed: bool
    states: list[LevelState] = field(default_factory=list)
    denied: Level | None = None
    reason: str = ""                # requests | tokens | concurrency | too_large | unavailable
    retry_after: float = 0.0
    degraded: bool = False          # the store was down and every level's policy is fail_open


class Limiter(Protocol):
    """`acquire` checks and takes every level in one atomic step; `settle` corrects the token reservation
    to the real usage and frees the concurrency slot. Backends never raise for a store outage: they apply
    each level's failure policy (fail_open: allowed and counted; fail_closed: a denial with reason
    `unavailable`)."""

    stats: dict[str, int]

    async def acquire(self, levels: Sequence[Level], tokens: int, high: bool, lease: str) -> Decision: ...

    async def settle(self, levels: Sequence[Level], lease: str, reserved: int, actual: int) -> None: ...

    async def peek(self, levels: Sequence[Level]) -> list[LevelState]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def gcra(tat: float, now: float, cost: float, limit: int, share: float) -> tuple[float, float]:
    """(new theoretical arrival time, seconds to wait; 0 if allowed now). A bucket of `limit` per minute;
    a request may only use `share` of it (low priority under a reserve)."""
    base = tat if tat > now else now
    new = base + cost * WINDOW / limit
    wait = new - now - WINDOW * share
    return new, (wait if wait > EPS else 0.0)


def remaining(new_tat: float, now: float, limit: int) -> int:
    r = int((WINDOW - (new_tat - now)) * limit / WINDOW + EPS)
    return r if r > 0 else 0


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for x-ratelimit-reset-*: "20ms", "1s", "8.64s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 2):g}s"
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s}s"
