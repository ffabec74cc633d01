"""OpenRouter parameter caching: which request parameters each model accepts, from `GET {base}/models`.

Every entry of OpenRouter's model list carries `supported_parameters` (values from its `Parameter` enum).
One fetch per TTL is shared by all concurrent requests; a failed fetch never fails a request (everything is
sent, as before) and is retried no sooner than `retry` seconds later. A model the list does not know is
sent unfiltered too, and a refetch for it is likewise rate-limited to one per `retry` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from proxy.providers.base import WireRequest

if TYPE_CHECKING:
    from proxy.upstream import Transport

log = logging.getLogger("proxy.providers.openrouter")

# Request fields checked against `supported_parameters`: OpenRouter's `Parameter` enum (openapi
# components.schemas.Parameter) minus `structured_outputs`, which is a capability, not a field.
# Everything else (messages, model, stream, stream_options, provider, models, route, transforms, plugins,
# usage, user, metadata, ...) is never dropped.
CHECKED = frozenset({
    "temperature", "top_p", "top_k", "min_p", "top_a", "frequency_penalty", "presence_penalty",
    "repetition_penalty", "max_tokens", "max_completion_tokens", "logit_bias", "logprobs", "top_logprobs",
    "prediction", "seed", "response_format", "stop", "tools", "tool_choice", "parallel_tool_calls",
    "include_reasoning", "reasoning", "reasoning_effort", "web_search_options", "verbosity",
})

# A field also counts as supported when the model lists one of these (OpenRouter treats them as the same).
EQUIVALENT: Mapping[str, tuple[str, ...]] = {
    "max_tokens": ("max_completion_tokens",),
    "max_completion_tokens": ("max_tokens",),
    "response_format": ("structured_outputs",),
    "reasoning_effort": ("reasoning",),
    "include_reasoning": ("reasoning",),
}

# Fields meaningless without another one: dropped together with it.
NEEDS: Mapping[str, str] = {"tool_choice": "tools", "parallel_tool_calls": "tools", "top_logprobs": "logprobs"}


def unsupported(body: Mapping[str, Any], supported: frozenset[str]) -> list[str]:
    """The body's checked fields the model does not list, in body order."""
    out = [k for k in body if k in CHECKED and k not in supported
           and not any(e in supported for e in EQUIVALENT.get(k, ()))]
    if out:
        gone = set(out)
        out += [k for k in body if k not in gone and NEEDS.get(k) in gone]
    return out


def parse_models(body: bytes) -> dict[str, frozenset[str]]:
    """`{"data": [{"id", "canonical_slug", "supported_parameters": [...]}, ...]}` -> id -> parameters."""
    data = orjson.loads(body)
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("no `data` list in the model list")
    out: dict[str, frozenset[str]] = {}
    for m in entries:
        if not isinstance(m, dict):
            continue
        params = m.get("supported_parameters")
        if not isinstance(params, list):
            continue                       # unknown -> that model is sent unfiltered
        got = frozenset(p for p in params if isinstance(p, str))
        for key in (m.get("canonical_slug"), m.get("id")):
            if isinstance(key, str) and key:
                out[key] = got
    return out


class ParamCache:
    """Supported parameters per model id; one instance per configured OpenRouter provider."""

    def __init__(self, *, url: str, headers: Mapping[str, str], ttl: float, retry: float, timeout: float,
                 provider: str) -> None:
        self.url, self.headers, self.provider = url, dict(headers), provider
        self.ttl, self.retry, self.timeout = ttl, retry, timeout
        self.models: dict[str, frozenset[str]] = {}
        self.fresh_until = 0.0       # loop time the fetched list goes stale
        self.next_try = 0.0          # earliest loop time another fetch may start (failure or miss)
        self.fetches = 0
        self._inflight: asyncio.Task[None] | None = None

    def lookup(self, model: str) -> frozenset[str] | None:
        """None: unknown model (send everything). A `:variant` suffix (`:free`, `:nitro`) falls back to the base id."""
        got = self.models.get(model)
        if got is None and ":" in model:
            got = self.models.get(model.rsplit(":", 1)[0])
        return got

    async def ensure(self, model: str, transport: Transport) -> None:
        """Make the list fresh enough for `model`; never raises for a fetch failure."""
        loop = asyncio.get_running_loop()
        if self._inflight is None:
            now = loop.time()
            if now < self.next_try or (now < self.fresh_until and self.lookup(model) is not None):
                return
            self._inflight = loop.create_task(self._refresh(transport))
        # shield: a client that goes away must not cancel the fetch other requests are waiting for
        await asyncio.shield(self._inflight)

    async def _refresh(self, transport: Transport) -> None:
        loop = asyncio.get_running_loop()
        self.fetches += 1
        try:
            async with asyncio.timeout(self.timeout):
                resp = await transport.send(WireRequest(method="GET", url=self.url, headers=self.headers))
                body = await resp.read()
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            self.models = parse_models(body)
            now = loop.time()
            self.fresh_until = now + self.ttl
            self.next_try = now + min(self.retry, self.ttl)
        except Exception as e:             # any failure: serve unfiltered, retry later
            reason = "timed out" if isinstance(e, TimeoutError) else type(e).__name__
            if isinstance(e, ValueError) and str(e).startswith("HTTP "):
                reason = str(e)
            log.warning("provider %r: fetching the model list failed (%s); parameters are sent unfiltered "
                        "and the fetch is retried in %gs", self.provider, reason, self.retry)
            self.next_try = loop.time() + self.retry
        finally:
            self._inflight = None
