"""The response cache stage: exact-match answers without touching a provider.

It sits after auth, limits and budget (a hit still counts against limits) and before cost and the router.
A hit returns the stored answer (JSON, or the original SSE events replayed); a miss calls `next` and stores
a 200 answer: a JSON body at once, a stream only once it ended normally with [DONE]. Store failures
(Redis down) only make the cache miss: the request is always served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from proxy.cache import sse
from proxy.cache.entry import Entry, decode, encode
from proxy.cache.key import Controls, cache_key, controls, namespace
from proxy.cache.stats import CacheStats
from proxy.config import Config, ModelConfig, Target
from proxy.context import ChatCall, Reply
from proxy.kv import KV, KVError, build_kv
from proxy.pipeline import Handler
from proxy.routing.models import ModelCatalog
from proxy.streaming.chunks import DONE, wants_usage

log = logging.getLogger("proxy.cache")
# Messages and Responses calls are cached in their chat form (converted replies; the ingress renders a hit
# like any other reply); a pass-through target's native answer is never stored.
ENDPOINTS = frozenset({"chat.completions", "embeddings", "messages", "responses"})
HEADER = "x-llm-cache"


def model_tag(model: str) -> str:
    return "model:" + model


def ns_tag(ns: str) -> str:
    return "ns:" + ns


ALL_TAG = "all"


def primary_target(model: ModelConfig) -> Target:
    """The first target of the lowest priority: what the model is routed to when all is well."""
    return min(enumerate(model.targets), key=lambda it: (it[1].priority if it[1].priority is not None
                                                          else it[0], it[0]))[1]


class CacheStage:
    """`models` is the router's catalog (aliases, `name@version`); the key uses the resolved entry, so an
    alias and the name it stands for share entries, and each version has its own."""

    def __init__(self, config: Config, models: ModelCatalog | None = None, kv: KV | None = None) -> None:
        self.cfg = config.cache
        self.kv: KV = kv if kv is not None else build_kv(config)
        self.models = models if models is not None else ModelCatalog(config.models)
        self.stats = CacheStats()
        self._keyed: dict[int, tuple[str, Target]] = {}          # id(model) -> (routed name, primary)
        self._decoded: dict[str, tuple[bytes, Entry]] = {}        # the memory store's bytes, decoded once
        self._targets: dict[tuple[str, str], Target] = {}

    def model_name(self, requested: str) -> str:
        """The configured name a requested model (alias, `name@version`) stands for; tags use it."""
        return self.models.resolve(requested).name if requested in self.models else requested

    async def __call__(self, call: ChatCall, next: Handler) -> Reply:
        plan = call.plan
        if not self.cfg.enabled or call.endpoint not in ENDPOINTS or plan is None:
            return await next(call)
        model = plan.model
        ctl = controls(call, self.cfg)
        ns = namespace(call.key, self.cfg)
        if ctl is None:
            call.response_headers[HEADER] = "BYPASS"
            call.cache = "bypass"
            self.stats.add(model.name, ns, "bypass")
            return await next(call)
        keyed = self._keyed.get(id(model))
        if keyed is None:
            keyed = self._keyed[id(model)] = (f"{model.name}@{model.version}" if model.version else model.name,
                                              primary_target(model))
        key = cache_key(ns, call.endpoint, keyed[0], keyed[1], call.body)
        if ctl.lookup:
            entry = await self._lookup(call, key, ns, ctl, model.name)
            if entry is not None:
                return self._hit(call, key, ns, entry, model.name)
        self.stats.add(model.name, ns, "miss")
        h = call.response_headers
        h[HEADER], h["x-llm-cache-key"] = "MISS", key
        call.cache = "miss"
        reply = await next(call)
        if not ctl.store or reply.status != 200 or reply.native:
            return reply
        if reply.chunks is None:
            if reply.body is not None and len(reply.body) <= self.cfg.max_entry_bytes:
                await self._store(call, key, ns, ctl, model.name,
                                  Entry(created=time.time(), model=model.name, usage=call.usage, body=reply.body))
            return reply
        reply.chunks = self._tee(call, key, ns, ctl, model.name, reply.chunks)
        return reply

    async def _lookup(self, call: ChatCall, key: str, ns: str, ctl: Controls, name: str) -> Entry | None:
        try:
            raw = await self.kv.get(key)
        except KVError:
            self.stats.add(name, ns, "error")
            return None
        if raw is None:
            return None
        seen = self._decoded.get(key)
        if seen is not None and seen[0] is raw:     # the memory store hands back the same bytes object
            entry: Entry | None = seen[1]
        else:
            entry = decode(raw)
            if entry is not None:
                if len(self._decoded) >= 1024:
                    self._decoded.clear()
                self._decoded[key] = (raw, entry)
        if entry is None or (ctl.max_age is not None and time.time() - entry.created > ctl.max_age):
            return None
        if entry.events is None and entry.body is None:
            return None
        return entry

    def _hit(self, call: ChatCall, key: str, ns: str, entry: Entry, name: str) -> Reply:
        self.stats.add(name, ns, "hit")
        age = max(0, int(time.time() - entry.created))
        call.usage = entry.usage
        call.cache = "hit"
        h = call.response_headers
        h[HEADER], h["x-llm-cache-key"], h["age"] = "HIT", key, str(age)
        if entry.provider:
            pm = (entry.provider, entry.upstream_model)
            target = self._targets.get(pm)
            if target is None:
                if len(self._targets) >= 1024:
                    self._targets.clear()
                target = self._targets[pm] = Target(provider=pm[0], model=pm[1])
            call.target = target                    # for the saved cost
            h["x-llm-provider"], h["x-llm-upstream-model"] = pm
        if not call.stream:
            body = entry.body if entry.body is not None else sse.assemble(entry.events or [], entry.usage)
            return Reply(body=body)
        want_usage = wants_usage(call.body)
        if entry.events is not None:
            events, usage_event = entry.events, entry.usage_event
            if want_usage and usage_event is None and entry.usage is not None:
                usage_event = sse.usage_event_for(events, entry.usage)
        else:
            assert entry.body is not None
            events, usage_event = sse.synthesise(entry.body)
        return Reply(chunks=_replay(events, usage_event if want_usage else None), content_type="text/event-stream")

    async def _tee(self, call: ChatCall, key: str, ns: str, ctl: Controls, name: str,
                   chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass every chunk through unchanged; store the stream only if it ran to its normal end."""
        parts: list[bytes] = []
        size, limit = 0, self.cfg.max_entry_bytes
        try:
            async for data in chunks:
                if size <= limit:
                    parts.append(data)
                    size += len(data)
                yield data
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        # Only reached when the upstream generator ended without error and the client kept reading.
        if size > limit:
            return
        entry = _stream_entry(call, name, b"".join(parts))
        if entry is not None:
            await self._store(call, key, ns, ctl, name, entry)

    async def _store(self, call: ChatCall, key: str, ns: str, ctl: Controls, name: str, entry: Entry) -> None:
        target = call.target
        if target is not None:
            entry.provider, entry.upstream_model = target.provider, target.model
        try:
            await self.kv.set(key, encode(entry, self.cfg.compress_over_bytes), ctl.ttl,
                              (model_tag(name), ns_tag(ns), ALL_TAG))
        except KVError:
            self.stats.add(name, ns, "error")
            return
        self.stats.add(name, ns, "store")

    async def invalidate(self, *, key: str | None = None, model: str | None = None,
                         ns: str | None = None) -> int:
        """Exactly one selector, or none for everything. Raises KVError if the store is unreachable."""
        if key is not None:
            return await self.kv.delete(key)
        if model is not None:
            return await self.kv.delete_tagged(model_tag(self.model_name(model)))
        if ns is not None:
            return await self.kv.delete_tagged(ns_tag(ns))
        return await self.kv.delete_tagged(ALL_TAG)

    async def close(self) -> None:
        await self.kv.close()


def _stream_entry(call: ChatCall, name: str, data: bytes) -> Entry | None:
    """A finished stream as an Entry: its events as sent (the usage-only event kept apart)."""
    events = sse.split_events(data)
    if not events or not sse.is_done(events[-1]):
        return None                    # truncated, or ended by an error event
    kept: list[bytes] = []
    usage_event: bytes | None = None
    for ev in events:
        if b'"usage"' in ev and usage_event is None and sse.is_usage_only(sse.event_json(ev)):
            usage_event = ev
            continue
        if ev.startswith(b"event: error") or ev.startswith(b"event:error"):
            return None
        kept.append(ev)
    body = sse.assemble(kept, call.usage)
    if body is None:
        return None
    return Entry(created=time.time(), model=name, usage=call.usage, body=body, events=kept,
                 usage_event=usage_event)


async def _replay(events: list[bytes], usage_event: bytes | None) -> AsyncIterator[bytes]:
    """The stored events in their original framing, in one write (they are all here already); the usage
    event, if wanted, goes just before [DONE]."""
    if usage_event is not None and events and sse.is_done(events[-1]):
        events = [*events[:-1], usage_event, events[-1]]
    elif usage_event is not None:
        events = [*events, usage_event]
    if not events or not sse.is_done(events[-1]):
        events = [*events, DONE]
    yield b"".join(events)
