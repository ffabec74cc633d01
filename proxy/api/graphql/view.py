"""strawberry's aiohttp view, bound to the gateway: the context (who is asking), WebSocket auth at
connection_init, graphql-transport-ws only, and the per-connection caps from `graphql:` config."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web
from cross_web import HTTPException
from strawberry.aiohttp.views import GraphQLView
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UNSET, UnsetType

from proxy.api.auth_throttle import AuthThrottle
from proxy.api.graphql.auth import Context, GQLError, credential_from_params, headers_without_credentials
from proxy.api.graphql.schema import build_schema
from proxy.api.http import REQUEST_ID
from proxy.api.parse import credential_from
from proxy.audit import client_ip
from proxy.config import GraphQLConfig
from proxy.gateway import GATEWAY


class GatewayGraphQLView(GraphQLView):
    def __init__(self, cfg: GraphQLConfig, throttle: AuthThrottle | None = None,
                 origins: Sequence[str] = ()) -> None:
        """`origins`: server.cors_origins; a browser page elsewhere may not open a WebSocket (403)."""
        super().__init__(
            build_schema(cfg), graphql_ide="graphiql" if cfg.graphiql else None, allow_queries_via_get=True,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=timedelta(seconds=cfg.connection_init_timeout),
            max_subscriptions_per_connection=cfg.max_subscriptions, allowed_origins=tuple(origins))
        self.cfg, self.throttle = cfg, throttle

    def encode_json(self, data: object) -> str:
        """orjson (each streamed chunk is one frame to encode); text, as graphql-transport-ws requires."""
        try:
            return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:                           # e.g. an integer beyond 64 bits in a JSON value
            out = super().encode_json(data)
            return out if isinstance(out, str) else out.decode()

    def decode_json(self, data: str | bytes) -> object:
        """A body (or frame) that is JSON but not an object or a batch array is refused like bad JSON
        (strawberry answers that 400; it would fail with a 500 on, say, a bare string)."""
        value = orjson.loads(data)
        if not isinstance(value, dict | list):
            raise json.JSONDecodeError("expected a JSON object", data if isinstance(data, str) else "", 0)
        return value

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        """strawberry answers a malformed request (bad JSON, no query, a mutation over GET) in plain text;
        ours is GraphQL's error shape, with the same status."""
        try:
            return await self.run(request=request)
        except HTTPException as e:
            return web.Response(body=orjson.dumps({"errors": [{"message": e.reason, "extensions": {
                "code": "BAD_REQUEST" if e.status_code < 500 else "INTERNAL_SERVER_ERROR"}}]}),
                status=e.status_code, content_type="application/json")

    async def get_context(self, request: web.Request, response: Any) -> Context:  # type: ignore[override]
        return Context(gw=request.app[GATEWAY], cfg=self.cfg, headers=headers_without_credentials(request.headers),
                       credential=credential_from(request.headers), request_id=request.get(REQUEST_ID),
                       ip=client_ip(request), throttle=self.throttle)

    async def on_ws_connect(self, context: Context) -> UnsetType:  # type: ignore[override]
        """connection_init's payload carries the key (browsers cannot set headers on a WebSocket); the
        upgrade request's own header is the fallback. A missing or bad key closes with 4403."""
        params = context.connection_params or {}
        context.credential = credential_from_params(params) or context.credential
        try:
            await context.principal()
        except GQLError:
            raise ConnectionRejectionError() from None
        return UNSET
