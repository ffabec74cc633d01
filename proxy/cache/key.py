"""The cache key and the per-request cache controls.

The key is the SHA-256 of the canonical JSON (sorted keys) of everything that shapes the answer, so it
never contains a payload and two spellings of one request (key order, `stream`, `user`...) share it.
The namespace (tenant) is hashed in too, so tenants can never read each other's entries.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgspec
import orjson

from proxy.config import CacheConfig, Target
from proxy.context import ChatCall
from proxy.errors import InvalidRequest

# Fields that do not change the answer (transport, accounting, the proxy's own controls).
IGNORED = frozenset({"model", "stream", "stream_options", "user", "metadata", "cache", "options", "store",
                     "service_tier"})


def namespace(key: Any, cfg: CacheConfig) -> str:
    """`tenant`: the key's source_id, else the key id; `key`: the key id; `shared`: one namespace.
    It comes from the authenticated key, never from the request body, so a client cannot pick a tenant."""
    if cfg.namespace == "shared":
        return "shared"
    if key is None:
        return "anonymous"
    if cfg.namespace == "tenant" and getattr(key, "source_id", None):
        return f"src:{key.source_id}"
    return f"key:{getattr(key, 'id', None) or 'master'}"


def cache_key(ns: str, endpoint: str, model: str, target: Target, body: dict[str, Any]) -> str:
    """`model` is the configured name; `target` its first (primary) target, so re-pointing a model at
    another provider or upstream model starts a fresh set of entries."""
    rest = {k: v for k, v in body.items() if k not in IGNORED}
    canon = orjson.dumps([ns, endpoint, model, target.provider, target.model, rest],
                         option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(canon).hexdigest()


class Controls(msgspec.Struct, frozen=True, gc=False):
    lookup: bool            # look for an entry (false: Cache-Control: no-cache)
    store: bool             # write the answer (false: Cache-Control: no-store)
    ttl: float              # seconds the written entry lives
    max_age: float | None   # accept only entries at most this old (Cache-Control: max-age)


def _opted(body: dict[str, Any]) -> bool | None:
    for where, holder in (("cache", body), ("options.cache", body.get("options"))):
        if isinstance(holder, dict) and holder.get("cache") is not None:
            v = holder["cache"]
            if not isinstance(v, bool):
                raise InvalidRequest(f"Invalid '{where}': expected a boolean.", param=where, code="invalid_type")
            return v
    return None


def _seconds(value: str, name: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0:
        raise InvalidRequest(f"Invalid '{name}': expected a number of seconds.", param=name, code="invalid_value")
    return v


def controls(call: ChatCall, cfg: CacheConfig) -> Controls | None:
    """What this request allows; None means bypass the cache entirely."""
    body = call.body
    opted = _opted(body)
    if opted is False or (cfg.mode == "opt_in" and opted is not True):
        return None
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        return None                                 # n > 1 asks for several random samples: never cached
    lookup = store = True
    ttl, max_age = cfg.ttl, None
    for part in call.headers.get("cache-control", "").split(","):
        name, _, value = part.strip().lower().partition("=")
        if name == "no-cache":
            lookup = False
        elif name == "no-store":
            store = False
        elif name == "max-age":
            max_age = ttl = _seconds(value.strip('"'), "Cache-Control: max-age")
    header_ttl = call.headers.get("x-llm-cache-ttl")
    if header_ttl is not None:
        ttl = _seconds(header_ttl, "x-llm-cache-ttl")
    ttl = min(ttl, cfg.max_ttl)
    if ttl <= 0:
        store = False
    if not lookup and not store:
        return None
    return Controls(lookup=lookup, store=store, ttl=ttl, max_age=max_age)
