"""The schema's output types. Plain data, built from the same store rows the REST routes render; the
two fields that make the Budget <-> ApiKey cycle resolve through the context (and the depth limit)."""

from __future__ import annotations

from enum import Enum

import strawberry
from strawberry.scalars import JSON

from proxy.api.graphql.auth import Context

Info = strawberry.Info[Context, None]


@strawberry.type
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int


@strawberry.type
class Model:
    id: str
    owned_by: str
    aliases: list[str]
    versions: list[str]
    deprecated: str | None


@strawberry.type
class KeyLimits:
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None


@strawberry.type(description="A threshold crossed in the budget's current period (once per pool and period).")
class BudgetAlert:
    threshold: float = strawberry.field(description="Percent of the amount.")
    spent_usd: float = strawberry.field(description="Settled spend when it fired.")
    scope_value: str = strawberry.field(description="The pool: '*' for a global budget, else the key id, "
                                        "source id or team.")
    period_start: str
    fired_at: float = strawberry.field(description="Unix seconds.")


@strawberry.type
class Budget:
    id: str
    name: str
    amount_usd: float
    period: str
    scope: str
    hard: bool
    created_at: int
    updated_at: int
    period_start: str
    spent_usd: float | None = strawberry.field(description="Spent this period (global budgets, or the "
                                               "calling key's own pool); null when not known.")
    reserved_usd: float | None
    remaining_usd: float | None
    alerts: list[BudgetAlert] = strawberry.field(description="Thresholds crossed this period (a virtual key "
                                                 "sees its own pool's and a global budget's).")

    @strawberry.field(description="Keys that point at this budget (a virtual key sees only itself).")
    async def keys(self, info: Info) -> list[ApiKey]:
        from proxy.api.graphql import queries
        return await queries.keys_of_budget(info.context, self.id)


@strawberry.type
class ApiKey:
    id: strawberry.ID
    name: str
    key_prefix: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    budget_id: str | None
    source_id: str | None
    source_type: str | None
    metadata: JSON
    expires_at: int | None
    disabled: bool
    revoked: bool
    revoked_at: int | None
    created_at: int | None
    updated_at: int | None

    @strawberry.field
    async def budget(self, info: Info) -> Budget | None:
        if self.budget_id is None:
            return None
        from proxy.api.graphql import queries
        return await queries.budget_by_id(info.context, self.budget_id)


@strawberry.type
class Principal:
    id: strawberry.ID
    name: str
    is_master: bool
    source_id: str | None
    source_type: str | None
    models: list[str] | None
    limits: KeyLimits
    budget_id: str | None
    expires_at: int | None

    @strawberry.field(description="The key's budget with what is left of it this period.")
    async def budget(self, info: Info) -> Budget | None:
        if self.budget_id is None:
            return None
        from proxy.api.graphql import queries
        return await queries.budget_by_id(info.context, self.budget_id)


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class UsageEvent:
    id: strawberry.ID
    request_id: str
    timestamp: str
    source_type: str | None
    source_id: str | None
    team: str | None
    request_type: str
    model: str
    provider: str | None
    upstream_model: str | None
    key_id: str | None
    budget_id: str | None
    batch_id: str | None
    usage: Usage
    cost_usd: float | None
    saved_cost_usd: float
    cached: bool
    is_async: bool
    stream: bool
    status: int
    error: str | None
    latency_ms: float
    time_to_first_token_ms: float | None
    estimated: bool
    ingress: str | None
    custom_id: str | None


@strawberry.type
class UsageEdge:
    cursor: str
    node: UsageEvent


@strawberry.type
class UsageConnection:
    edges: list[UsageEdge]
    nodes: list[UsageEvent]
    page_info: PageInfo


@strawberry.type
class KeyEdge:
    cursor: str
    node: ApiKey


@strawberry.type
class KeyConnection:
    edges: list[KeyEdge]
    nodes: list[ApiKey]
    page_info: PageInfo


@strawberry.enum
class UsageGroupBy(Enum):
    MODEL = "model"
    SOURCE = "source"
    KEY = "key"
    DAY = "day"
    HOUR = "hour"
    BUDGET = "budget"
    PROVIDER = "provider"


@strawberry.type
class UsageGroup:
    key: str = strawberry.field(description="The group's value (model, source id, key id, local day or "
                                "hour, ...); empty when the events have none.")
    requests: int
    errors: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None
    saved_cost_usd: float
    unpriced_requests: int
    estimated_requests: int


@strawberry.type
class TargetHealth:
    target: str
    state: str
    consecutive_failures: int
    open_for_s: float
    inflight: int
    latency_ewma_ms: float
    successes: int
    errors: int
    last_error: str | None


@strawberry.type
class ProviderHealth:
    name: str
    type: str
    health: JSON | None = strawberry.field(description="Active health check result, when probes run.")
    targets: list[TargetHealth]


@strawberry.type
class FunctionCall:
    name: str | None
    arguments: str | None


@strawberry.type
class ToolCall:
    id: str | None
    type: str | None
    function: FunctionCall | None


@strawberry.type
class ToolCallDelta:
    index: int
    id: str | None
    type: str | None
    function: FunctionCall | None


@strawberry.type
class ChatCompletion:
    id: str | None
    request_id: str
    model: str | None
    content: str | None
    tool_calls: list[ToolCall] | None
    finish_reason: str | None = strawberry.field(description="OpenAI's values: stop, length, tool_calls, "
                                                 "content_filter.")
    usage: Usage | None
    cost_usd: float | None
    cached: bool


@strawberry.type
class ChatChunk:
    id: str | None
    request_id: str
    model: str | None
    delta: str | None
    tool_call_deltas: list[ToolCallDelta] | None
    finish_reason: str | None
    usage: Usage | None = strawberry.field(description="On the last chunk, when the provider reports it.")


@strawberry.type
class CreatedKey:
    key: ApiKey
    secret: str = strawberry.field(description="The key itself: shown once, never stored.")
