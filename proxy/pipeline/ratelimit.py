"""The rate-limit stage: after auth and validation, before budget and cache (a cache hit still counts).

It finds the levels that apply (global; the provider of the first target the router will try; the model;
the key; the key's source_id), reserves the request and its token estimate at all of them in one atomic
limiter call, and registers a finaliser that settles the tokens to the real usage and frees the
concurrency slot once the last byte went out. Every answer carries OpenAI's x-ratelimit-* headers for the
tightest level; a refusal is 429 `rate_limit_exceeded` with Retry-After.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Awaitable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.config import Config, LimitRule, ModelConfig, Target
from proxy.context import ChatCall
from proxy.errors import ProxyError, RateLimited, Unavailable
from proxy.limits import Decision, Level, LevelState, Limiter, format_reset
from proxy.limits.memory import MemoryLimiter
from proxy.limits.tokens import TokenEstimator

PRIORITY_HEADER = "x-llm-priority"


def build_limiter(config: Config) -> Limiter:
    lim = config.limits
    if config.storage.redis:
        from proxy.limits.redis import RedisLimiter
        return RedisLimiter(config.storage.redis, prefix=lim.prefix, timeout=lim.redis_timeout,
                            cooldown=lim.breaker_cooldown, lease_ttl=lim.concurrency_lease)
    return MemoryLimiter()


def level(name: str, key: str, rule: LimitRule | None) -> Level | None:
    if rule is None or not (rule.rpm or rule.tpm or rule.max_concurrency):
        return None
    return Level(name, key, rule.rpm or 0, rule.tpm or 0, rule.max_concurrency or 0, rule.priority_reserve,
                 rule.failure == "fail_closed")


def rate_headers(states: list[LevelState]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tightest level (smallest remaining share) of each kind."""
    req: LevelState | None = None
    tok: LevelState | None = None
    rq = tk = 2.0
    for s in states:
        lv = s.level
        if lv.rpm and (f := s.remaining_requests / lv.rpm) < rq:
            req, rq = s, f
        if lv.tpm and (f := s.remaining_tokens / lv.tpm) < tk:
            tok, tk = s, f
    h: dict[str, str] = {}
    if req is not None:
        h["x-ratelimit-limit-requests"] = str(req.level.rpm)
        h["x-ratelimit-remaining-requests"] = str(req.remaining_requests)
        h["x-ratelimit-reset-requests"] = format_reset(req.reset_requests)
    if tok is not None:
        h["x-ratelimit-limit-tokens"] = str(tok.level.tpm)
        h["x-ratelimit-remaining-tokens"] = str(tok.remaining_tokens)
        h["x-ratelimit-reset-tokens"] = format_reset(tok.reset_tokens)
    return h


class RateLimitStage:
    def __init__(self, config: Config, router: Any, limiter: Limiter | None = None,
                 estimator: TokenEstimator | None = None) -> None:
        lim = self.cfg = config.limits
        self.router = router
        self.limiter = limiter if limiter is not None else build_limiter(config)
        self.estimator = estimator or TokenEstimator(lim.default_max_tokens, lim.tokenizer, lim.tokenizer_max_chars)
        self.global_ = level("global", "g", lim.global_)
        self.providers = {n: lv for n, r in lim.providers.items() if (lv := level(f"provider:{n}", f"p:{n}", r))}
        self.models = {n: lv for n, r in lim.models.items() if (lv := level(f"model:{n}", f"m:{n}", r))}
        self._key_levels: dict[tuple, Level | None] = {}
        self._source_levels: dict[str, Level | None] = {}
        self._targets: dict[int, list[Target]] = {}
        self._lease = uuid.uuid4().hex[:12] + ":"
        self.batch_reserve = 1.0 - config.jobs.batch_share   # batch lines never take more than batch_share
        self.rejected: dict[str, int] = {}

    # -- which levels apply --------------------------------------------------------------------------

    def first_target(self, model: ModelConfig) -> Target:
        """The target the router tries first: the highest-priority one whose circuit is not open (within
        an equal-priority balanced group, the first listed: the balancer's pick is not known yet)."""
        targets = self._targets.get(id(model))
        if targets is None:
            targets = self._targets[id(model)] = [t for _, t in sorted(
                enumerate(model.targets), key=lambda it: (it[1].priority if it[1].priority is not None
                                                          else it[0], it[0]))]
        if len(targets) > 1:
            health, now = self.router.health, time.monotonic()
            for t in targets:
                if health.available(t, now):
                    return t
        return targets[0]

    def key_level(self, key: Any) -> Level | None:
        if key is None:
            return None
        master = getattr(key, "is_master", False)
        sig: tuple = ("master",) if master else (key.id, key.rpm, key.tpm, key.max_concurrency)
        lv = self._key_levels.get(sig)
        if lv is not None or sig in self._key_levels:
            return lv
        if master:
            rule: LimitRule | None = self.cfg.master
        else:
            d = self.cfg.keys
            rule = LimitRule(rpm=key.rpm or d.rpm, tpm=key.tpm or d.tpm,
                             max_concurrency=key.max_concurrency or d.max_concurrency,
                             priority_reserve=d.priority_reserve, failure=d.failure)
        if len(self._key_levels) > 100_000:
            self._key_levels.clear()
        lv = self._key_levels[sig] = level(f"key:{key.id}", f"k:{key.id}", rule)
        return lv

    def source_level(self, source: str | None) -> Level | None:
        if not source:
            return None
        lv = self._source_levels.get(source)
        if lv is None and source not in self._source_levels:
            rule = self.cfg.sources.get(source) or self.cfg.sources.get("*")
            if len(self._source_levels) > 100_000:
                self._source_levels.clear()
            lv = self._source_levels[source] = level(f"source:{source}", f"s:{source}", rule)
        return lv

    def levels_for(self, call: ChatCall) -> tuple[list[Level], str]:
        """(levels, model name to count tokens with)."""
        out: list[Level] = []
        if self.global_ is not None:
            out.append(self.global_)
        token_model = call.model
        plan = call.plan
        if plan is not None:
            target = plan.targets[0]                 # the target the router tries first
            token_model = target.model
            if (p := self.providers.get(target.provider)) is not None:
                out.append(p)
            if (m := self.models.get(plan.model.name)) is not None:
                out.append(m)
        key = call.key
        if key is not None:
            if (k := self.key_level(key)) is not None:
                out.append(k)
            if (s := self.source_level(getattr(key, "source_id", None))) is not None:
                out.append(s)
        return out, token_model

    def high_priority(self, call: ChatCall) -> bool:
        v: Any = call.headers.get(PRIORITY_HEADER)
        if v is None:
            md = call.body.get("metadata")
            v = md.get("priority") if isinstance(md, dict) else None
        if v is None or isinstance(v, bool):
            return False
        if isinstance(v, str):
            v = v.strip().lower()
            if v == "high":
                return True
            try:
                v = int(v)
            except ValueError:
                return False
        return isinstance(v, int | float) and v >= self.cfg.priority_threshold

    # -- the stage -----------------------------------------------------------------------------------

    def check(self, call: ChatCall) -> Awaitable[None] | None:
        """Every level in one atomic step. The x-ratelimit-* headers go on the answer, errors from
        later stages included (`call.error_headers`)."""
        if not self.cfg.enabled:
            return None
        levels, token_model = self.levels_for(call)
        if not levels:
            return None
        if call.ingress == "batch" and self.batch_reserve > 0:   # low priority: the rest stays for live calls
            levels = [dataclasses.replace(lv, reserve=max(lv.reserve, self.batch_reserve)) for lv in levels]
        return self._acquire(call, levels, token_model)

    async def _acquire(self, call: ChatCall, levels: list[Level], token_model: str) -> None:
        uses_tokens = settles = False
        for lv in levels:
            if lv.tpm:
                uses_tokens = settles = True
            elif lv.concurrency:
                settles = True
        tokens = self.estimator.estimate(call, token_model) if uses_tokens else 0
        lease = f"{self._lease}{id(call)}"     # unique among calls in flight
        high = call.ingress != "batch" and self.high_priority(call)
        d = await self.limiter.acquire(levels, tokens, high, lease)
        headers = rate_headers(d.states)
        if not d.allowed:
            raise self._refusal(d, headers, tokens)
        call.response_headers.update(headers)
        call.error_headers = headers               # an error from a later stage still tells the limits
        if settles and not d.degraded:
            call.on_finish(lambda c: self._settle(c, levels, lease, tokens))

    async def _settle(self, call: ChatCall, levels: list[Level], lease: str, reserved: int) -> None:
        u = call.usage
        actual = (u.total_tokens or u.prompt_tokens + u.completion_tokens) if u is not None else 0
        await self.limiter.settle(levels, lease, reserved, actual)

    def _refusal(self, d: Decision, headers: dict[str, str], tokens: int) -> ProxyError:
        lv = d.denied
        assert lv is not None
        self.rejected[d.reason] = self.rejected.get(d.reason, 0) + 1
        wait = str(max(1, math.ceil(d.retry_after)))
        if d.reason == "unavailable":
            return Unavailable("The rate limiter is unavailable; try again shortly.",
                               headers={**headers, "retry-after": wait})
        if d.reason == "too_large":
            return RateLimited(f"Request too large for {lv.name}: tokens per min (TPM) limit {lv.tpm}, "
                               f"requested {tokens}. Reduce the prompt or max_tokens.",
                               headers=dict(headers), final=True)
        what = {"requests": f"requests per min (RPM): limit {lv.rpm}",
                "tokens": f"tokens per min (TPM): limit {lv.tpm}",
                "concurrency": f"concurrent requests: limit {lv.concurrency}"}.get(d.reason, d.reason)
        return RateLimited(f"Rate limit reached for {lv.name} on {what}. Please try again in {wait}s.",
                           headers={**headers, "retry-after": wait})

    # -- lifecycle and /v1/quota ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.limiter.start()          # token estimates need no tables: nothing else to load

    async def close(self) -> None:
        await self.limiter.close()

    async def quota(self, key: Any, model: str | None = None) -> list[LevelState]:
        levels: list[Level] = []
        if model and model in self.router.models:
            m = self.router.resolve(model)
            t = self.first_target(m)
            levels += [lv for lv in (self.providers.get(t.provider), self.models.get(m.name)) if lv]
        levels += [lv for lv in (self.key_level(key), self.source_level(getattr(key, "source_id", None)),
                                 self.global_) if lv]
        return await self.limiter.peek(levels)


class LimitsCollector(Collector):
    """llm_ratelimit_* counters, read at scrape time from the stage and its limiter."""

    def __init__(self, stage: RateLimitStage) -> None:
        self.stage = stage

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        rej = CounterMetricFamily("llm_ratelimit_rejections", "Requests refused by a rate limit, by reason.",
                                  labels=["reason"])
        for reason, n in self.stage.rejected.items():
            rej.add_metric([reason], float(n))
        store = CounterMetricFamily("llm_ratelimit_store_events",
                                    "Shared limit store: fail_open (admitted while Redis was down), "
                                    "fail_closed (refused), redis_errors.", labels=["event"])
        for event, n in getattr(self.stage.limiter, "stats", {}).items():
            store.add_metric([event], float(n))
        yield from (rej, store)
