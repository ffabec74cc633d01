"""The schema: Query, Mutation, Subscription, and the extensions that bound and clean every operation.

`python -m proxy.api.graphql.schema > schema.graphql` writes the SDL the repository keeps (a test holds
the two equal)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import AddValidationRules, DisableIntrospection
from strawberry.types import ExecutionContext

from proxy.api.graphql import chat, queries
from proxy.api.graphql import types as t
from proxy.api.graphql.auth import GQLError, from_proxy
from proxy.api.graphql.inputs import ChatInput, KeyInput, UsageFilter, key_body
from proxy.api.graphql.limits import alias_rule, depth_rule
from proxy.config import GraphQLConfig
from proxy.errors import ProxyError

log = logging.getLogger("proxy.graphql")
Info = t.Info


@strawberry.type
class Query:
    @strawberry.field(description="The models the key may call.")
    async def models(self, info: Info) -> list[t.Model]:
        return queries.models(info.context, await info.context.principal())

    @strawberry.field(description="The calling key: limits, budget and what is left of it.")
    async def me(self, info: Info) -> t.Principal:
        return queries.me(await info.context.principal())

    @strawberry.field(description="Usage events, newest first; a virtual key sees only its own.")
    async def usage(self, info: Info, filter: UsageFilter | None = None, first: int = 50,
                    after: str | None = None) -> t.UsageConnection:
        return await queries.usage(info.context, await info.context.principal(), filter, first, after)

    @strawberry.field(description="Usage totals grouped by model, source, key, budget, provider, hour or day, "
                                  "from the hourly rollups; `tz` (an IANA zone) cuts days and reads times "
                                  "without an offset.")
    async def usage_summary(self, info: Info, group_by: t.UsageGroupBy, filter: UsageFilter | None = None,
                            tz: str = "UTC") -> list[t.UsageGroup]:
        return await queries.usage_summary(info.context, await info.context.principal(), group_by, filter, tz)

    @strawberry.field(description="The key's budget, or every budget for the master key.")
    async def budgets(self, info: Info) -> list[t.Budget]:
        return await queries.budgets(info.context, await info.context.principal())

    @strawberry.field(description="Admin: virtual keys (revoked ones left out).")
    async def keys(self, info: Info, first: int = 50, after: str | None = None) -> t.KeyConnection:
        return await queries.keys(info.context, first, after)

    @strawberry.field(description="Admin: breaker state, in-flight, latency and errors of every target.")
    async def providers(self, info: Info) -> list[t.ProviderHealth]:
        await info.context.master()
        return queries.providers(info.context)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="One chat completion through the gateway's pipeline (one usage event).")
    async def chat_completion(self, info: Info, input: ChatInput) -> t.ChatCompletion:
        return await chat.chat_completion(info.context, input)

    @strawberry.mutation(description="Admin: create a virtual key; the secret is returned once.")
    async def create_key(self, info: Info, input: KeyInput) -> t.CreatedKey:
        ctx = info.context
        await ctx.master()
        store = ctx.gw.keys
        if store is None:
            raise GQLError("The key store is not configured.", "UNAVAILABLE")
        try:
            rec, secret = await store.create(key_body(input), actor="master", ip=None)
        except ProxyError as e:
            raise from_proxy(e) from None
        return t.CreatedKey(key=queries.api_key(rec), secret=secret)

    @strawberry.mutation(description="Admin: revoke a virtual key (at once on every replica).")
    async def revoke_key(self, info: Info, id: strawberry.ID) -> t.ApiKey:
        ctx = info.context
        await ctx.master()
        store = ctx.gw.keys
        if store is None:
            raise GQLError("The key store is not configured.", "UNAVAILABLE")
        try:
            rec = await store.revoke(str(id), actor="master", ip=None)
        except ProxyError as e:
            raise from_proxy(e) from None
        return queries.api_key(rec)


@strawberry.type
class Subscription:
    @strawberry.subscription(description="A streamed chat completion, one chunk per event; usage on the last.")
    def chat_completion_stream(self, info: Info, input: ChatInput) -> AsyncGenerator[t.ChatChunk, None]:
        return chat.chat_stream(info.context, input)     # the generator itself: its aclose ends the call


class GatewaySchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Every result's errors pass here before they are sent (queries, mutations, each subscription
        event). Validation errors and our coded errors are shown as they are; a gateway error that escaped
        a resolver gets its code; anything else is logged and masked as 'Unexpected error.'. Done in place
        here rather than by a per-result extension, which would cost every streamed chunk."""
        for err in errors:
            orig = err.original_error
            if orig is None or isinstance(orig, GQLError):
                continue
            if isinstance(orig, ProxyError):
                coded = from_proxy(orig)
                err.message, err.extensions = coded.message, coded.extensions
            else:
                log.error("graphql resolver failed at %s: %s", err.path, type(orig).__name__,
                          exc_info=(type(orig), orig, orig.__traceback__))
                err.message, err.extensions = "Unexpected error.", {"code": "INTERNAL_SERVER_ERROR"}
            err.args = (err.message,)
            err.original_error = err.cause = None
            err.__cause__ = err.__context__ = None


def build_schema(cfg: GraphQLConfig) -> strawberry.Schema:
    rules = [depth_rule(cfg.max_depth), alias_rule(cfg.max_aliases)]
    extensions: list[Any] = [lambda: AddValidationRules(rules)]
    if not cfg.introspection:
        extensions.append(DisableIntrospection)
    return GatewaySchema(query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions)


def sdl() -> str:
    return str(build_schema(GraphQLConfig())).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(sdl(), end="")
