"""POST /v1/requests: the seed's request envelope, answered in OpenAI's chat completion format.

    {"request": {"model", "messages",
                 "options": {"temperature", "max_tokens", "stream", "cache", "async", "batch_id", "webhook_url"},
                 "metadata": {"source_id", "source_type", "priority", "budget_id"}}}

The envelope is checked here, so a bad one gets a 400 naming its full path (`request.options.max_tokens`);
the inner `request` object is then exactly the body REST accepts with the seed's `options` and `metadata`
(proxy/api/parse.py lifts the options; attribution, priority, the cache controls and the batch tag read
them from there), so the envelope and REST share one way of honouring them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.api import jobs
from proxy.api.http import REQUEST_ID
from proxy.api.parse import chat_call, decode_json
from proxy.api.respond import serve_call
from proxy.errors import InvalidRequest, Unavailable
from proxy.gateway import GATEWAY

OPTIONS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "temperature": ((int, float), "a number between 0 and 2"),
    "max_tokens": (int, "an integer of at least 1"),
    "stream": (bool, "a boolean"),
    "cache": (bool, "a boolean"),
    "async": (bool, "a boolean"),
    "batch_id": (str, "a string"),
    "webhook_url": (str, "a string"),
}
METADATA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "source_id": (str, "a string"),
    "source_type": (str, "a string"),
    "priority": ((int, str), "an integer or 'high'"),
    "budget_id": (str, "a string"),
}
TOP = frozenset({"model", "messages", "options", "metadata"})


def _bad(path: str, what: str, code: str = "invalid_type") -> InvalidRequest:
    return InvalidRequest(f"Invalid '{path}': {what}.", param=path, code=code)


def _fields(obj: Any, path: str, spec: dict[str, tuple[type | tuple[type, ...], str]]) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise _bad(path, "expected an object")
    for name, value in obj.items():
        if name not in spec:
            raise _bad(f"{path}.{name}", "unknown field", "unknown_parameter")
        typ, what = spec[name]
        if value is None:
            continue
        if (isinstance(value, bool) and typ is not bool) or not isinstance(value, typ):
            raise _bad(f"{path}.{name}", f"expected {what}")
    return obj


def unwrap(body: dict[str, Any]) -> dict[str, Any]:
    """The envelope's `request`, checked: every error names its path under `request.`."""
    req = body.get("request")
    if req is None:
        raise InvalidRequest("Missing required parameter: 'request'.", param="request",
                             code="missing_required_parameter")
    if not isinstance(req, dict):
        raise _bad("request", "expected an object")
    other = next((k for k in body if k != "request"), None)
    if other is not None:
        raise _bad(other, "unknown field (the envelope holds only 'request')", "unknown_parameter")
    extra = next((k for k in req if k not in TOP), None)
    if extra is not None:
        raise _bad(f"request.{extra}", "unknown field", "unknown_parameter")
    model = req.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'request.model'.", param="request.model",
                             code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _bad("request.model", "expected a non-empty string")
    opts = _fields(req.get("options"), "request.options", OPTIONS)
    t = opts.get("temperature")
    if t is not None and not 0 <= t <= 2:
        raise _bad("request.options.temperature", "expected a number between 0 and 2", "invalid_value")
    m = opts.get("max_tokens")
    if m is not None and m < 1:
        raise _bad("request.options.max_tokens", "expected an integer of at least 1", "invalid_value")
    md = _fields(req.get("metadata"), "request.metadata", METADATA)
    p = md.get("priority")
    if isinstance(p, str) and p.strip().lower() != "high":
        raise _bad("request.metadata.priority", "expected an integer or 'high'", "invalid_value")
    return req


def _prefixed(e: InvalidRequest) -> InvalidRequest:
    """A chat-body error (`messages[0].role`) named at its place in the envelope."""
    if e.param and not e.param.startswith("request"):
        e.message = e.message.replace(f"'{e.param}'", f"'request.{e.param}'")
        e.param = f"request.{e.param}"
    return e


async def requests(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    if not gw.accepting:
        raise Unavailable("The server is shutting down; retry on another replica.",
                          headers={"Connection": "close", "Retry-After": "1"})
    req = unwrap(decode_json(await request.read()))
    opts = req.get("options") or {}
    try:
        if opts.get("async") or jobs.wants_async(request):
            return await jobs.submit(request, req, "chat.completions", "request.options.webhook_url")
        if opts.get("webhook_url") is not None:
            raise _bad("request.options.webhook_url", "a webhook needs 'request.options.async': true",
                       "invalid_value")
        call = chat_call(req, request.headers, request_id=request.get(REQUEST_ID), ingress="envelope")
        call.endpoint = "chat.completions"
        return await serve_call(request, call)
    except InvalidRequest as e:
        raise _prefixed(e) from None
