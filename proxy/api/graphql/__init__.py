"""The GraphQL API at /graphql: queries over usage, budgets, keys and providers, chat as a mutation and a
subscription (graphql-transport-ws), all on the gateway's one pipeline and store functions.

Nothing here imports strawberry: the route's first request builds the view (proxy/api/graphql/view.py),
so a gateway whose clients never use GraphQL never loads it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.config import GraphQLConfig


class LazyGraphQL:
    """The /graphql handler; builds strawberry's view on first use (synchronously: no race)."""

    def __init__(self, cfg: GraphQLConfig) -> None:
        self.cfg = cfg
        self.view: Any = None

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        view = self.view
        if view is None:
            from proxy.api.graphql.view import GatewayGraphQLView
            view = self.view = GatewayGraphQLView(self.cfg)
        return await view(request)


def setup(app: web.Application, cfg: GraphQLConfig) -> None:
    if cfg.enabled:
        handler = LazyGraphQL(cfg)
        app.router.add_route("GET", "/graphql", handler)
        app.router.add_route("POST", "/graphql", handler)
