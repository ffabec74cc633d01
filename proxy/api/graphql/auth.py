"""Who is asking, once per HTTP request or WebSocket connection, and GraphQL's coded errors.

Every error a client sees carries `extensions.code`: UNAUTHENTICATED (no key, bad key), FORBIDDEN (an
admin field asked by a virtual key), BAD_USER_INPUT, NOT_FOUND, RATE_LIMITED, ... mapped from the
gateway's own error tree so REST and GraphQL refuse the same things for the same reasons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from proxy.api.auth_throttle import AuthThrottle
from proxy.api.parse import CREDENTIAL_HEADERS, credential_from
from proxy.audit import credential_hint
from proxy.config import GraphQLConfig
from proxy.context import Principal
from proxy.errors import ProxyError
from proxy.gateway import Gateway

UNAUTHENTICATED, FORBIDDEN, BAD_USER_INPUT = "UNAUTHENTICATED", "FORBIDDEN", "BAD_USER_INPUT"
_BY_STATUS = {400: BAD_USER_INPUT, 401: UNAUTHENTICATED, 403: FORBIDDEN, 404: "NOT_FOUND",
              413: BAD_USER_INPUT, 429: "RATE_LIMITED", 499: "CLIENT_CLOSED", 503: "UNAVAILABLE",
              504: "UPSTREAM_TIMEOUT"}


class GQLError(Exception):
    """An error meant for the client: its message is shown and `extensions` go out as they are."""

    def __init__(self, message: str, code: str, **more: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extensions: dict[str, Any] = {"code": code, **{k: v for k, v in more.items() if v is not None}}


def code_for(status: int) -> str:
    return _BY_STATUS.get(status) or ("UPSTREAM_ERROR" if status in (502,) else
                                      BAD_USER_INPUT if 400 <= status < 500 else "INTERNAL_SERVER_ERROR")


def from_proxy(e: ProxyError) -> GQLError:
    """The gateway's error, with its OpenAI fields kept as extensions (status, type, param, errorCode)."""
    return from_envelope(e.status, e.message, e.type, e.param, e.code)


def from_envelope(status: int, message: str, type_: str | None, param: str | None,
                  code: str | None) -> GQLError:
    return GQLError(message, code_for(status), status=status, type=type_, param=param, errorCode=code)


def headers_without_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {low: v for k, v in headers.items() if (low := k.lower()) not in CREDENTIAL_HEADERS}


def credential_from_params(params: Mapping[str, Any]) -> str | None:
    """connection_init's payload: `Authorization` / `authorization` (Bearer), or `x-api-key` / `api-key`."""
    return credential_from(CIMultiDict({k: v for k, v in params.items() if isinstance(v, str)}))


@dataclass(eq=False)
class Context:
    """One HTTP request's or one WebSocket connection's context. `connection_params` is set by strawberry
    from connection_init; the credential is then taken from it (see view.on_ws_connect)."""

    gw: Gateway
    cfg: GraphQLConfig
    headers: dict[str, str]                       # the request's, lower-case names, credentials removed
    credential: str | None
    request_id: str | None = None                 # the HTTP request's id (the first call made reuses it)
    ip: str | None = None
    throttle: AuthThrottle | None = None          # the REST edge's: bad keys count the same on both
    connection_params: dict[str, Any] | None = None
    _who: Principal | None = field(default=None, repr=False)
    keys_by_budget: asyncio.Future[dict[str, list[Any]]] | None = field(default=None, repr=False)  # one scan

    async def principal(self) -> Principal:
        """Authenticated once per HTTP request; on a WebSocket, for every operation (the key lookup is
        cached), so a key revoked or expired while the connection stays open stops working there too."""
        if self._who is None or self.connection_params is not None:
            try:
                self._who = await self.gw.auth.authenticate(self.credential)
            except ProxyError as e:
                if e.status == 401 and self.throttle is not None and (wait := self.throttle.failed(self.ip)):
                    msg = "Too many requests with invalid API keys from this address; try again later."
                    self._audit("auth.throttled", "anonymous", msg)
                    raise GQLError(msg, "RATE_LIMITED", status=429, errorCode="auth_throttled",
                                   retryAfter=wait) from None
                if e.status == 401:
                    self._audit("auth.failure", "anonymous", e.message)
                raise from_proxy(e) from None
        return self._who

    async def master(self) -> Principal:
        who = await self.principal()
        if not who.is_master:
            msg = "This field needs the master key; virtual keys may not use it."
            self._audit("auth.forbidden", who.id, msg)
            raise GQLError(msg, FORBIDDEN)
        return who

    def _audit(self, action: str, actor: str, reason: str) -> None:
        """As REST's 401/403 (proxy/audit.py denial_recorder): queued, never awaited."""
        if self.gw.keys is not None:
            detail: dict[str, Any] = {"reason": reason, "path": "/graphql"}
            hint = credential_hint(self.credential)
            if hint:
                detail["key_prefix"] = hint
            self.gw.keys.audit.enqueue(action, actor, ip=self.ip, detail=detail)

    def take_request_id(self) -> str | None:
        rid, self.request_id = self.request_id, None
        return rid
