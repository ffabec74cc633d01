"""The only aiohttp middleware: request id, CORS, the request body's type and deadline, and rendering
every error in the client protocol's envelope (with the CORS headers, so a browser app can read it):
OpenAI's JSON, or Anthropic's on a route registered with `anthropic_route`."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from random import getrandbits

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.api.auth_throttle import AuthThrottle
from proxy.errors import Forbidden, NotFound, PayloadTooLarge, ProxyError, RateLimited
from proxy.gateway import GATEWAY

log = logging.getLogger("proxy.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID = web.RequestKey("request_id", str)
CORS_HEADERS = web.RequestKey("cors_headers", dict)
ANTHROPIC_ROUTES = web.AppKey("anthropic_routes", set)     # resources whose errors use Anthropic's envelope

EXPOSED = ("x-request-id, x-llm-provider, x-llm-upstream-model, x-llm-attempts, x-llm-cache, x-llm-cost, "
           "x-llm-dropped-params, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
           "x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
           "x-ratelimit-reset-tokens, retry-after")


def error_response(err: ProxyError, request_id: str, extra: dict[str, str] | None = None,
                   anthropic: bool = False) -> web.Response:
    headers = {**err.headers, "x-request-id": request_id}
    if extra:
        headers.update(extra)
    resp = web.Response(body=err.anthropic_body() if anthropic else err.body(), status=err.status,
                        content_type="application/json", headers=headers)
    if err.status == 408:
        resp.force_close()          # the rest of the body may still come: this connection is done
    return resp


def anthropic_route(app: web.Application, resource: web.AbstractResource) -> None:
    """Every error on `resource` (its handler's, the body checks', a 405) is rendered in Anthropic's
    envelope: the route says so once, where it is registered."""
    app.setdefault(ANTHROPIC_ROUTES, set()).add(resource)


def _anthropic(request: web.Request) -> bool:
    routes = request.app.get(ANTHROPIC_ROUTES)
    return routes is not None and request.match_info.route.resource in routes


def new_request_id() -> str:
    """Unique, not secret: 96 random bits without a system call."""
    return f"req_{getrandbits(96):024x}"


Denied = Callable[[web.Request, ProxyError], None]

# application/octet-stream is what HTTP libraries send for bytes given no type (aiohttp's `data=bytes`):
# "unspecified", like no Content-Type at all. Form, multipart and text/plain bodies (what a browser may
# send cross-site without a preflight) are refused.
_JSON_TYPES = frozenset({"application/json", "application/octet-stream"})
# OpenAI's Files API takes multipart uploads larger than server.max_body_bytes: its handler streams them,
# under its own size cap and the same body deadline (proxy/api/files.py). Keys are never cookies, so a
# cross-site form cannot post one with credentials.
_UPLOADS = frozenset({"/v1/files"})


def edge(*, cors_origins: list[str] | tuple[str, ...] = (), body_timeout: float = 60.0,
         on_denied: Denied | None = None, throttle: AuthThrottle | None = None) -> Middleware:
    """The one middleware: a request id on every answer; CORS (preflights answered, a disallowed origin's
    preflight 403, the headers on every answer to an allowed origin, errors included); the body checked
    (JSON only, whole within `body_timeout`); every error in its envelope (OpenAI's, or Anthropic's on an
    `anthropic_route`). `on_denied` sees each 401/403 and each throttled auth failure (the audit log records
    them); `throttle` turns an address's bad keys past its limit into 429. One frame, not one per concern: it wraps every request."""
    allow_any = "*" in cors_origins
    allowed = frozenset(cors_origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request.headers.get("x-request-id", "")
        if not _REQUEST_ID.match(rid):
            rid = new_request_id()
        request[REQUEST_ID] = rid
        cors_headers: dict[str, str] | None = None
        try:
            origin = request.headers.get("Origin")
            if origin is not None:
                preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
                if allow_any or origin in allowed:
                    cors_headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                                    "Access-Control-Expose-Headers": EXPOSED}
                    if preflight:
                        return _preflight(request, cors_headers, rid)
                    request[CORS_HEADERS] = cors_headers  # a stream is prepared inside the handler: it adds them
                elif preflight:
                    raise Forbidden(f"Cross-origin requests from {origin[:200]} are not allowed.",
                                    code="cors_origin_not_allowed")
            if request.body_exists and not (request.path in _UPLOADS and request.content_type == "multipart/form-data"):
                _check_type(request)
                if not request.content.is_eof():      # usually here already, with the headers: no timer
                    await _read_body(request, body_timeout)
            resp = await handler(request)
        except ProxyError as e:
            if e.status == 401 and throttle is not None and (wait := throttle.failed(request.remote)) is not None:
                e = RateLimited("Too many requests with invalid API keys from this address; try again later.",
                                code="auth_throttled", headers={"retry-after": str(wait)})
            if on_denied is not None and (e.status in (401, 403) or e.code == "auth_throttled"):
                on_denied(request, e)
            return error_response(e, rid, cors_headers, _anthropic(request))
        except web.HTTPRequestEntityTooLarge:
            limit = request.app[GATEWAY].config.server.max_body_bytes
            return error_response(PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes."), rid,
                                  cors_headers, _anthropic(request))
        except web.HTTPException as e:
            if e.status == 404:
                return error_response(NotFound(f"Unknown request URL: {request.method} {request.path}."), rid,
                                      cors_headers, _anthropic(request))
            if e.status == 405:
                return error_response(ProxyError(f"Method {request.method} is not allowed on {request.path}.",
                                                 status=405, type="invalid_request_error",
                                                 code="method_not_allowed"), rid, cors_headers,
                                      _anthropic(request))
            if e.status >= 400:
                return error_response(ProxyError(e.reason, status=e.status, type="invalid_request_error"), rid,
                                      cors_headers, _anthropic(request))
            raise
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", request.method, request.path, rid)
            return error_response(ProxyError("The server had an error while processing your request."), rid,
                                  cors_headers, _anthropic(request))
        if not resp.prepared:
            resp.headers.setdefault("x-request-id", rid)
            if cors_headers is not None:
                resp.headers.update(cors_headers)
        return resp

    return middleware


def _preflight(request: web.Request, cors_headers: dict[str, str], rid: str) -> web.Response:
    req_headers = request.headers.get("Access-Control-Request-Headers", "authorization, content-type")
    return web.Response(status=204, headers={
        **cors_headers, "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
        "Access-Control-Allow-Headers": req_headers, "Access-Control-Max-Age": "600", "x-request-id": rid})


def _check_type(request: web.Request) -> None:
    """A body must be JSON (415 otherwise)."""
    ctype = request.headers.get("Content-Type")
    if ctype is not None:
        media = ctype.partition(";")[0].strip().lower()
        if media not in _JSON_TYPES and not media.endswith("+json"):
            raise ProxyError(f"Unsupported Content-Type {media[:100]!r}: send application/json.",
                             status=415, type="invalid_request_error", code="unsupported_media_type")


async def _read_body(request: web.Request, seconds: float) -> None:
    """The rest of a body must arrive within `seconds` of its headers: a body shorter than its
    Content-Length gets 408, not a held connection. Read here once; the handler's `request.read()`
    returns the buffered bytes."""
    try:
        async with asyncio.timeout(seconds):
            await request.read()
    except TimeoutError:
        raise ProxyError(f"The request body did not arrive within {seconds:g}s.", status=408,
                         type="invalid_request_error", code="request_timeout") from None
