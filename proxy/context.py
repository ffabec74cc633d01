"""ChatCall: what every pipeline stage sees, whichever ingress (REST, GraphQL, WebSocket, batch) built it."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from random import getrandbits
from typing import Any

import msgspec

from proxy.config import ModelConfig, Target

_GLOB = re.compile(r"[*?\[]")


class Usage(msgspec.Struct, omit_defaults=True, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0          # prompt tokens served from the provider's prompt cache
    cache_write_tokens: int = 0     # prompt tokens written to the provider's prompt cache
    estimated: bool = False         # counted by us, not reported by the provider

    def openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens or self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens or self.cache_write_tokens:
            # cache writes (Anthropic's cache_creation_input_tokens) sit next to cached_tokens, where
            # OpenRouter puts them and OpenAI-compatible clients look for them
            details = out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
            if self.cache_write_tokens:
                details["cache_write_tokens"] = self.cache_write_tokens
        return out


def usage_from_openai(u: dict | None) -> Usage | None:
    if not isinstance(u, dict):
        return None
    details = u.get("prompt_tokens_details") or {}
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    return Usage(                         # positional: prompt, completion, total, cached, cache write
        prompt,
        completion,
        int(u.get("total_tokens") or prompt + completion),
        int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
        # top level (ours), or inside prompt_tokens_details (OpenRouter's usage accounting)
        int(u.get("cache_write_tokens") or (details.get("cache_write_tokens") if
                                            isinstance(details, dict) else 0) or 0),
    )


@dataclass(slots=True)
class Reply:
    """What the pipeline answers: a whole JSON body, or SSE bytes to relay as they come."""

    status: int = 200
    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    native: bool = False       # in the client's own protocol (passed through), not OpenAI chat to convert


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller: the master key or a virtual key."""

    id: str
    name: str = ""
    is_master: bool = False
    models: tuple[str, ...] | None = None        # public model names or globs; None: every model
    source_id: str | None = None
    source_type: str | None = None
    budget_id: str | None = None
    rpm: int | None = None                        # requests per minute, None: no key limit
    tpm: int | None = None                        # tokens per minute
    max_concurrency: int | None = None            # requests in flight at once
    metadata: dict[str, Any] = {}
    expires_at: float | None = None               # unix seconds; checked on every request, cached or not

    def may_use(self, model: str) -> bool:
        """`models` holds public names or shell-style globs (`gpt-4o*`, `claude-?-*`)."""
        if self.models is None:
            return True
        return model in self.models or any(fnmatchcase(model, p) for p in self.models if _GLOB.search(p))


MASTER = Principal(id="master", name="master key", is_master=True)


class Plan(msgspec.Struct, gc=False):
    """The route, decided once after validation: cache, limits, accounting and the router all read it."""

    model: ModelConfig               # the configured entry the requested name resolved to
    name: str                        # its public name (`name` or `name@version`)
    targets: list[Target]            # in the order the router tries them, fallback models' included


# How a call ended (`ChatCall.ended_by`): one word each for the ledger, the access log and traces.
COMPLETED, UPSTREAM_ERROR, CLIENT_GONE, DRAIN, WRITE_STALL, TIMEOUT, REFUSED, ERROR = (
    "completed", "upstream_error", "client_gone", "drain", "write_stall", "timeout", "refused", "error")
CLIENT_CLOSED = 499                  # the status recorded for a client that left (nginx's)


@dataclass(slots=True, eq=False)         # identity: the gateway keys its open calls by the call
class ChatCall:
    """One request's state, from its ingress to its end. Stages read and annotate it; none of them sees
    an HTTP object. Facts flow forward as typed fields: nobody re-parses a body another stage parsed."""

    body: dict[str, Any]
    model: str
    stream: bool
    credential: str | None = None          # the key the client presented (never logged, never forwarded)
    raw_body: bytes | None = None          # the client's body bytes, for a target that speaks its protocol
    pinned_provider: str | None = None     # only this provider can serve the call (it holds its conversation)
    endpoint: str = "chat.completions"     # or "embeddings", "responses", "messages", ...
    ingress: str = "rest"
    request_id: str = field(default_factory=lambda: f"req_{getrandbits(96):024x}")
    started: float = field(default_factory=time.monotonic)
    headers: dict[str, str] = field(default_factory=dict)   # request headers, lower-case names, minus credentials
    key: Principal | None = None           # the authenticated key (master or virtual)
    plan: Plan | None = None               # the route, once planned (pipeline/plan.py)
    target: Target | None = None           # the target of the last attempt
    attempts: int = 0
    usage: Usage | None = None             # None: not reported (yet); estimated at the end if still None
    first_byte_at: float | None = None
    # the outcome: the status the client saw, the error's text and code, and what ended the call
    status: int = 0
    error: str | None = None
    error_code: str | None = None
    ended_by: str | None = None
    # facts the stages and the adapter add as the call goes
    cache: str | None = None               # "hit" | "miss" | "bypass"; None: the cache did not look
    budget_id: str | None = None           # the budget the call is under, if any
    batch_id: str | None = None            # the caller's grouping tag (seed's options.batch_id), or a batch's id
    custom_id: str | None = None           # a batch line's custom_id (its usage event carries it)
    cost_nanos: int | None = None          # priced by accounting; None: unpriced
    saved_nanos: int = 0                   # a cache hit: what the call would have cost
    priced: Usage | None = None            # the usage cost_nanos was priced from (priced once)
    finish_reasons: list[str] | None = None   # read by the adapter off its parse
    response_model: str | None = None
    reply_body: bytes | None = None        # a whole answer's body (an estimate reads it if usage is missing)
    relayed: list[bytes] | None = None     # a stream's client-bound chunks, in order (the relay appends)
    throttle_waited: float = 0.0           # seconds the router waited for 429-cooled targets
    holds: list[Any] = field(default_factory=list)   # reservations to settle at the end (budget)
    response_headers: dict[str, str] = field(default_factory=dict)
    error_headers: dict[str, str] | None = None   # of those, the ones an error answer carries too (limits)
    extras: dict[str, Any] = field(default_factory=dict)   # one module's private scratch (tracing only)
    trace: Any = None                      # the trace record while sampled (proxy/telemetry/tracing.py)
    ended: bool = False                    # the end ran (Gateway.end): it runs once
    gauged: int = 0                        # which in-flight gauges the call moved up (telemetry/metrics.py)
    _finalizers: list[Callable[[ChatCall], Awaitable[None] | None]] = field(default_factory=list)
    _reply_hooks: list[Callable[[ChatCall, Reply], None]] | None = None

    def on_finish(self, fn: Callable[[ChatCall], Awaitable[None] | None]) -> None:
        """Release something at the call's end, after accounting: a slot, a target's in-flight count.
        Finalisers must not depend on each other's order; the gateway runs them in its end step."""
        self._finalizers.append(fn)

    def on_reply(self, fn: Callable[[ChatCall, Reply], None]) -> None:
        """For a check: run `fn` when the reply is ready, before it is written (e.g. to add headers)."""
        if self._reply_hooks is None:
            self._reply_hooks = []
        self._reply_hooks.append(fn)

    def replied(self, reply: Reply) -> Reply:
        hooks = self._reply_hooks
        if hooks:
            for fn in reversed(hooks):
                fn(self, reply)
        return reply

    def take_finalizers(self) -> list[Callable[[ChatCall], Awaitable[None] | None]]:
        fns, self._finalizers = self._finalizers, []
        fns.reverse()
        return fns

    async def finish(self) -> None:
        """Run the finalisers alone (tools and benches that drive stages without a gateway)."""
        for fn in self.take_finalizers():
            res = fn(self)
            if res is not None:
                await res

    @property
    def public_model(self) -> str:
        """The public name the call resolved to (the requested one before planning)."""
        return self.plan.name if self.plan is not None else self.model
