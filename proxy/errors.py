"""The error tree, and the one OpenAI error envelope every failure is rendered in.

    ProxyError (500 server_error)
    ├── InvalidRequest (400), PayloadTooLarge (413)
    ├── Unauthorized (401), Forbidden (403 permission_error)
    ├── NotFound (404) ── ModelNotFound
    ├── RateLimited (429 rate_limit_exceeded), QuotaExceeded (429 insufficient_quota)
    ├── Unavailable (503) ── LedgerUnavailable (ledger_unavailable), ShuttingDown (gateway_shutting_down)
    └── UpstreamError (502, `retryable`) ── UpstreamTimeout (504)
"""

from __future__ import annotations

import math
from typing import Any

import orjson

_UNSET: Any = object()


class ProxyError(Exception):
    """An error that reaches the client as `{"error": {message, type, param, code}}` with `status`."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = _UNSET,          # explicit None means "no code", unlike leaving it out
        headers: dict[str, str] | None = None,
        final: bool = False,                # retrying the same request will not help (x-should-retry: false)
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not _UNSET:
            self.code = code
        self.param = param
        self.headers = headers or {}
        self.final = final
        if final:
            self.headers.setdefault("x-should-retry", "false")

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())

    def sse(self) -> bytes:
        """The error as the last SSE event of a stream that already started."""
        return b"event: error\ndata: " + self.body() + b"\n\n"

    def anthropic_body(self) -> bytes:
        """Anthropic's envelope, `{"type": "error", "error": {"type", "message"}}`, typed by the status."""
        etype = ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": self.message}})

    def anthropic_sse(self) -> bytes:
        return b"event: error\ndata: " + self.anthropic_body() + b"\n\n"


# HTTP status -> Anthropic's error type (its docs' table); other 4xx are invalid_request_error, 5xx api_error.
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(ProxyError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExceeded(ProxyError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, **kw) -> None:
        super().__init__(message, final=True, **kw)


class Unavailable(ProxyError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class LedgerUnavailable(Unavailable):
    """The ledger (budgets) cannot be read: the call cannot be admitted under its budget; retry shortly."""

    code = "ledger_unavailable"

    def __init__(self, message: str = "The usage ledger is unreachable; try again shortly.") -> None:
        super().__init__(message, headers={"retry-after": "2"})


class ShuttingDown(Unavailable):
    """The drain deadline ended a call still in flight (a stream gets it as its last event)."""

    code = "gateway_shutting_down"


class UpstreamError(ProxyError):
    """A provider failed; `retryable` tells the router whether another attempt or target may help."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retryable = retryable
        self.retry_after = retry_after
        if retry_after is not None:
            # The client sees the provider's back-off hint (whole seconds, rounded up).
            self.headers.setdefault("retry-after", str(max(0, math.ceil(retry_after))))


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ProviderAuthFailed(UpstreamError):
    """The provider refused the gateway's own credentials (HTTP 401/403): a configuration fault, not load
    and not the client's. Another target may work, the same one will not: it is neither retried nor
    counted by the breaker. The message names the provider, never the key (a provider's 401 text may
    quote part of it), so the provider's own message is dropped."""

    status = 502
    type = "upstream_auth_error"
    code = "provider_auth_failed"

    def __init__(self, provider: str = "", upstream_status: int = 401) -> None:
        self.upstream_status = upstream_status
        super().__init__(self._describe(provider), retryable=True)

    def _describe(self, provider: str) -> str:
        who = f"provider '{provider}'" if provider else "the provider"
        where = f"providers.{provider}.api_key" if provider else "the provider's api_key"
        return f"{who} refused the gateway's credentials (HTTP {self.upstream_status}): check {where}"

    def naming(self, provider: str) -> ProviderAuthFailed:
        """Adapters that map statuses do not know the provider's configured name: the router adds it."""
        self.message = self._describe(provider)
        self.args = (self.message,)
        return self


class ProviderKeyMissing(ProviderAuthFailed):
    """The provider's api_key named an environment variable that was not set: nothing is sent."""

    code = "provider_key_missing"

    def __init__(self, provider: str, variable: str, detail: str = "") -> None:
        self.variable, self.detail = variable, detail
        super().__init__(provider)

    def _describe(self, provider: str) -> str:
        if self.detail:
            return f"provider '{provider}' has no credentials: {self.detail}"
        return (f"provider '{provider}' has no API key: {self.variable} was not set when the gateway started "
                f"(providers.{provider}.api_key)")


def upstream_error_for_status(status: int, message: str, *, type: str | None = None, code: str | None = None,
                              param: str | None = None, retry_after: float | None = None) -> UpstreamError:
    """Map a provider's HTTP status to the status and type OpenAI's clients expect, keeping its message."""
    if status in (400, 413, 422):
        return UpstreamError(message, status=400 if status == 422 else status, type=type or "invalid_request_error",
                             code=code, param=param, retryable=False)
    if status in (401, 403):
        # The provider rejected *our* credentials: a gateway fault, not the client's.
        return ProviderAuthFailed(upstream_status=status)
    if status == 404:
        return UpstreamError(message, status=404, type=type or "invalid_request_error",
                             code=code or "model_not_found", retryable=True)
    if status in (408, 409):
        return UpstreamError(message, status=status, type=type or "server_error", code=code, retryable=True)
    if status == 429:
        return UpstreamError(message, status=429, type=type or "rate_limit_error", code=code or "rate_limit_exceeded",
                             retryable=True, retry_after=retry_after)
    if status in (503, 529):
        return UpstreamError(message, status=503, type=type or "server_error", code=code or "overloaded",
                             retryable=True, retry_after=retry_after)
    if 400 <= status < 500:
        return UpstreamError(message, status=status, type=type or "invalid_request_error", code=code,
                             param=param, retryable=False)
    return UpstreamError(message, status=502, type=type or "upstream_error", code=code or "upstream_error",
                         retryable=True)
