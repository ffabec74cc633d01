"""The GraphQL API at /graphql: queries over usage, budgets, keys and providers, chat as a mutation and a
subscription (graphql-transport-ws), all on the gateway's one pipeline and store functions.

Nothing here imports strawberry: the route's first request builds the view (proxy/api/graphql/view.py),
so a gateway whose clients never use GraphQL never loads it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.api.auth_throttle import AuthThrottle
from proxy.config import GraphQLConfig
from proxy.gateway import GATEWAY


class LazyGraphQL:
    """The /graphql handler; builds strawberry's view on first use (synchronously: no race)."""

    def __init__(self, cfg: GraphQLConfig, throttle: AuthThrottle | None) -> None:
        self.cfg, self.throttle = cfg, throttle
        self.view: Any = None

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        view = self.view
        if view is None:
            from proxy.api.graphql.view import GatewayGraphQLView
            origins = request.app[GATEWAY].config.server.cors_origins   # also the WebSocket origins allowed
            view = self.view = GatewayGraphQLView(self.cfg, self.throttle, origins)
        return await view(request)


def setup(app: web.Application, cfg: GraphQLConfig, throttle: AuthThrottle | None = None) -> None:
    """`throttle`: the REST edge's auth-failure throttle, so bad keys count the same on both."""
    if cfg.enabled:
        handler = LazyGraphQL(cfg, throttle)
        app.router.add_route("GET", "/graphql", handler)
        app.router.add_route("POST", "/graphql", handler)
