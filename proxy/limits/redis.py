"""Redis limiter: ONE Lua script call per request checks and takes every level atomically, on Redis's clock
(so replicas with skewed clocks agree). Short socket timeouts and a circuit breaker: a dead or paused Redis
costs at most one timeout, then is skipped for `breaker_cooldown`; meanwhile each level's failure policy
applies (fail_open: allowed and counted in `stats["fail_open"]`; fail_closed: 503).

Keys per level under the prefix: `<level>:r` and `<level>:t` hold the GCRA theoretical arrival time (in
seconds, PX-expired when the bucket is full again); `<level>:c` is a sorted set of concurrency leases
scored by their expiry, so a crashed replica's slots free themselves after `concurrency_lease`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.kv.redis import Breaker
from proxy.limits import Decision, Level, LevelState

log = logging.getLogger("proxy.limits")

# KEYS: 3 per level (r, t, c). ARGV: op ("a" acquire, "s" settle, "p" peek), tokens (acquire) or token
# delta (settle), lease id, lease ttl, high (1/0), then per level: rpm, tpm, concurrency, reserve.
# Returns {allowed, denied level index (1-based, 0 none), reason, retry ms, then per level:
# remaining requests, reset requests ms, remaining tokens, reset tokens ms, inflight} (-1: not limited).
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op, n, lease, ttl, high = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1'
local W, EPS = 60.0, 0.000001
local nlev = #KEYS / 3
local lv = {}
for i = 1, nlev do
  local b = 5 + (i - 1) * 4
  local share = 1.0
  if not high then share = 1.0 - tonumber(ARGV[b + 4]) end
  lv[i] = {rpm = tonumber(ARGV[b + 1]), tpm = tonumber(ARGV[b + 2]), conc = tonumber(ARGV[b + 3]), share = share,
           r = KEYS[(i - 1) * 3 + 1], t = KEYS[(i - 1) * 3 + 2], c = KEYS[(i - 1) * 3 + 3]}
end
local function tat_of(key)
  local v = tonumber(redis.call('GET', key) or '0')
  if v < now then return now end
  return v
end
local function put(key, tat)
  local ms = math.ceil((tat - now) * 1000)
  if ms > 0 then redis.call('SET', key, tostring(tat), 'PX', ms) else redis.call('DEL', key) end
end
local function rem(tat, limit)
  local r = math.floor((W - (tat - now)) * limit / W + EPS)
  if r < 0 then return 0 end
  return r
end
local function inflight(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end
if op == 's' then
  for i = 1, nlev do
    local l = lv[i]
    if l.tpm > 0 and n ~= 0 then
      local v = redis.call('GET', l.t)
      if v then put(l.t, tonumber(v) + n * W / l.tpm) end
    end
    if l.conc > 0 then redis.call('ZREM', l.c, lease) end
  end
  return {1}
end
local out = {1, 0, '', 0}
local worst = 0
local base_r, base_t, new_r, new_t, cur = {}, {}, {}, {}, {}
for i = 1, nlev do
  local l = lv[i]
  if l.rpm > 0 then
    base_r[i] = tat_of(l.r)
    new_r[i] = base_r[i] + W / l.rpm
    local wait = new_r[i] - now - W * l.share
    if op == 'a' and wait > EPS and wait > worst then worst = wait; out[2] = i; out[3] = 'requests' end
  end
  if l.tpm > 0 then
    if op == 'a' and n * W / l.tpm > W * l.share + EPS then
      return {0, i, 'too_large', 0}
    end
    base_t[i] = tat_of(l.t)
    new_t[i] = base_t[i] + n * W / l.tpm
    local wait = new_t[i] - now - W * l.share
    if op == 'a' and wait > EPS and wait > worst then worst = wait; out[2] = i; out[3] = 'tokens' end
  end
  if l.conc > 0 then
    cur[i] = inflight(l.c)
    if op == 'a' and out[2] == 0 and cur[i] + 1 > math.floor(l.conc * l.share + EPS) then
      worst = 1; out[2] = i; out[3] = 'concurrency'
    end
  end
end
local take = op == 'a' and out[2] == 0
if out[2] > 0 then out[1] = 0; out[4] = math.ceil(worst * 1000) end
for i = 1, nlev do
  local l = lv[i]
  local rr, rrs, rt, rts, c = -1, 0, -1, 0, -1
  if l.rpm > 0 then
    local v = base_r[i]
    if take then v = new_r[i]; put(l.r, v) end
    rr = rem(v, l.rpm); rrs = math.ceil((v - now) * 1000)
  end
  if l.tpm > 0 then
    local v = base_t[i]
    if take then v = new_t[i]; put(l.t, v) end
    rt = rem(v, l.tpm); rts = math.ceil((v - now) * 1000)
  end
  if l.conc > 0 then
    c = cur[i]
    if take then
      redis.call('ZADD', l.c, now + ttl, lease)
      redis.call('PEXPIRE', l.c, math.ceil(ttl * 1000))
      c = c + 1
    end
  end
  out[#out + 1] = rr; out[#out + 1] = rrs; out[#out + 1] = rt; out[#out + 1] = rts; out[#out + 1] = c
end
return out
"""


class RedisLimiter:
    def __init__(self, url: str, *, prefix: str = "llm:rl:", timeout: float = 0.1, cooldown: float = 2.0,
                 lease_ttl: float = 900.0, client: Redis | None = None) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.lease_ttl = lease_ttl
        self.breaker = Breaker(cooldown, probe_timeout=timeout * 2)
        self.client = client or Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            health_check_interval=0)
        self.script = self.client.register_script(SCRIPT)   # EVALSHA; loads itself once on NOSCRIPT
        self.stats: dict[str, int] = {"fail_open": 0, "fail_closed": 0, "redis_errors": 0}

    async def start(self) -> None:
        try:
            async with asyncio.timeout(self.timeout * 5):
                self.script.sha = await self.client.script_load(SCRIPT)
        except (RedisError, OSError, TimeoutError):
            pass            # not fatal: the first call loads it, or the failure policy applies

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            pass

    def _args(self, levels: Sequence[Level], op: str, n: int, lease: str, high: bool) -> tuple[list, list]:
        p = self.prefix
        keys: list[str] = []
        args: list = [op, n, lease, self.lease_ttl, 1 if high else 0]
        for lv in levels:
            k = p + lv.key
            keys += (k + ":r", k + ":t", k + ":c")
            args += (lv.rpm, lv.tpm, lv.concurrency, lv.reserve)
        return keys, args

    async def _run(self, keys: list, args: list) -> list | None:
        """One round trip; None when Redis is down, paused or slow (then the breaker skips it a while)."""
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self.timeout * 2):
                res = await self.script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as e:
            self.stats["redis_errors"] += 1
            if self.breaker.closed:
                log.warning("redis rate limiter unavailable (%s); failure policies apply for %gs",
                            type(e).__name__, self.breaker.cooldown)     # never the URL: it may hold a password
            self.breaker.trip()
            return None
        self.breaker.reset()
        return res

    async def acquire(self, levels: Sequence[Level], tokens: int, high: bool, lease: str) -> Decision:
        keys, args = self._args(levels, "a", tokens, lease, high)
        res = await self._run(keys, args)
        if res is None:
            return self._outage(levels)
        states = _states(levels, res) if len(res) > 4 else []
        if int(res[0]) != 1:
            reason = res[2].decode() if isinstance(res[2], bytes) else str(res[2])
            return Decision(False, states, denied=levels[int(res[1]) - 1], reason=reason,
                            retry_after=int(res[3]) / 1000)
        return Decision(True, states)

    def _outage(self, levels: Sequence[Level]) -> Decision:
        closed = next((lv for lv in levels if lv.fail_closed), None)
        if closed is not None:
            self.stats["fail_closed"] += 1
            return Decision(False, denied=closed, reason="unavailable", retry_after=max(1.0, self.breaker.cooldown))
        self.stats["fail_open"] += 1
        return Decision(True, degraded=True)

    async def settle(self, levels: Sequence[Level], lease: str, reserved: int, actual: int) -> None:
        if not any(lv.concurrency or (lv.tpm and actual != reserved) for lv in levels):
            return              # nothing to correct: no second round trip
        keys, args = self._args(levels, "s", actual - reserved, lease, True)
        await self._run(keys, args)     # on failure: leases expire by themselves, tokens stay reserved

    async def peek(self, levels: Sequence[Level]) -> list[LevelState]:
        keys, args = self._args(levels, "p", 0, "", True)
        res = await self._run(keys, args)
        return _states(levels, res) if res is not None else [LevelState(lv) for lv in levels]


def _states(levels: Sequence[Level], res: list) -> list[LevelState]:
    out = []
    for i, lv in enumerate(levels):
        rr, rrs, rt, rts, c = (int(x) for x in res[4 + i * 5: 9 + i * 5])
        out.append(LevelState(lv, rr, max(0.0, rrs / 1000), rt, max(0.0, rts / 1000), c))
    return out
