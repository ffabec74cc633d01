"""The only aiohttp middlewares: request id, CORS, and rendering every error as OpenAI's JSON envelope."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from random import getrandbits

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.errors import NotFound, PayloadTooLarge, ProxyError
from proxy.gateway import GATEWAY

log = logging.getLogger("proxy.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID = web.RequestKey("request_id", str)
CORS_HEADERS = web.RequestKey("cors_headers", dict)

EXPOSED = ("x-request-id, x-llm-provider, x-llm-upstream-model, x-llm-attempts, x-llm-cache, x-llm-cost, "
           "x-llm-dropped-params, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
           "x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
           "x-ratelimit-reset-tokens, retry-after")


def error_response(err: ProxyError, request_id: str) -> web.Response:
    return web.Response(body=err.body(), status=err.status, content_type="application/json",
                        headers={**err.headers, "x-request-id": request_id})


def new_request_id() -> str:
    """Unique, not secret: 96 random bits without a system call."""
    return f"req_{getrandbits(96):024x}"


Denied = Callable[[web.Request, ProxyError], None]


def errors(on_denied: Denied | None = None) -> Middleware:
    """The outermost middleware: a request id on every answer, every error as OpenAI's JSON envelope.
    `on_denied` sees each 401/403 (the audit log records them)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request.headers.get("x-request-id", "")
        if not _REQUEST_ID.match(rid):
            rid = new_request_id()
        request[REQUEST_ID] = rid
        try:
            resp = await handler(request)
        except ProxyError as e:
            if on_denied is not None and e.status in (401, 403):
                on_denied(request, e)
            return error_response(e, rid)
        except web.HTTPRequestEntityTooLarge:
            limit = request.app[GATEWAY].config.server.max_body_bytes
            return error_response(PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes."), rid)
        except web.HTTPException as e:
            if e.status == 404:
                return error_response(NotFound(f"Unknown request URL: {request.method} {request.path}."), rid)
            if e.status == 405:
                return error_response(ProxyError(f"Method {request.method} is not allowed on {request.path}.",
                                                 status=405, type="invalid_request_error",
                                                 code="method_not_allowed"), rid)
            if e.status >= 400:
                return error_response(ProxyError(e.reason, status=e.status, type="invalid_request_error"), rid)
            raise
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", request.method, request.path, rid)
            return error_response(ProxyError("The server had an error while processing your request."), rid)
        if not resp.prepared:
            resp.headers.setdefault("x-request-id", rid)
        return resp

    return middleware


def cors(origins: list[str]):
    """CORS for browser apps: preflight answered, our headers exposed so streams and limits are readable."""
    allow_any = "*" in origins
    allowed = frozenset(origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not origin or not (allow_any or origin in allowed):
            return await handler(request)
        cors_headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                        "Access-Control-Expose-Headers": EXPOSED}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            req_headers = request.headers.get("Access-Control-Request-Headers", "authorization, content-type")
            return web.Response(status=204, headers={
                **cors_headers, "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": req_headers, "Access-Control-Max-Age": "600"})
        request[CORS_HEADERS] = cors_headers      # a stream is prepared inside the handler: it adds them
        resp = await handler(request)
        if not resp.prepared:
            resp.headers.update(cors_headers)
        return resp

    return middleware
