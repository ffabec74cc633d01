"""One job, one batch line: build the call the way a live request would be built, run it through the
pipeline (`Gateway.call_whole`), and say what its outcome means for the job or the line."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import orjson

from proxy.context import MASTER, ChatCall, Principal
from proxy.errors import ProxyError, Unauthorized
from proxy.gateway import Gateway
from proxy.keys import principal_from, rejection
from proxy.store import Ledger
from proxy.store.batches import Line, Settled


async def principal(ledger: Ledger, key_id: str) -> Principal:
    """The key a stored job or batch was submitted with, as it is now (revoked since: 401)."""
    if key_id == MASTER.id:
        return MASTER
    rec = await ledger.get_key(key_id)
    why = rejection(rec, time.time())
    if why is not None or rec is None:
        raise Unauthorized(why or "Incorrect API key provided.")
    return principal_from(rec)


def job_request_id(job_id: str) -> str:
    return "req_" + job_id.removeprefix("job_")


def line_request_id(batch_id: str, line_no: int) -> str:
    """Derived from the line, so a line run again after a crash records no second usage event (the
    ledger's request ids are unique)."""
    return f"req_{batch_id.removeprefix('batch_')}_{line_no}"


def new_call(body: dict[str, Any], endpoint: str, key: Principal, request_id: str, ingress: str,
             headers: dict[str, str] | None = None) -> ChatCall:
    model = body.get("model")
    call = ChatCall(body=body, model=model if isinstance(model, str) else "", stream=False, endpoint=endpoint,
                    ingress=ingress, request_id=request_id, headers=headers or {})
    call.key = key
    return call


class Outcome(msgspec.Struct):
    status: int
    body: Any                        # the answer's JSON (or the error envelope)
    refused_before_provider: bool    # nothing reached a provider: no usage event was written
    code: str | None


async def run(gw: Gateway, call: ChatCall) -> Outcome:
    status, raw = await gw.call_whole(call)
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = {"error": {"message": "The answer was not JSON.", "type": "server_error", "param": None,
                          "code": None}}
    return Outcome(status, body, call.attempts == 0 and call.cache != "hit", call.error_code)


def error_object(body: Any) -> dict[str, Any]:
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else {"message": "The request failed.", "type": "server_error",
                                              "param": None, "code": None}


def settled(line: Line, request_id: str, out: Outcome) -> Settled:
    """The output (or error) file's line: OpenAI's format, `response.request_id` the usage event's."""
    ok = out.status < 400
    u = out.body.get("usage") if ok and isinstance(out.body, dict) else None
    u = u if isinstance(u, dict) else {}
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    err = None if ok else {"code": error_object(out.body).get("code"),
                           "message": error_object(out.body).get("message")}
    doc = {"id": f"batch_req_{request_id.removeprefix('req_')}", "custom_id": line.custom_id,
           "response": {"status_code": out.status, "request_id": request_id, "body": out.body}, "error": err}
    return Settled(batch_id=line.batch_id, custom_id=line.custom_id, request_id=request_id,
                   http_status=out.status, output=orjson.dumps(doc).decode(), is_error=not ok,
                   prompt_tokens=int(u.get("prompt_tokens") or 0), completion_tokens=int(u.get("completion_tokens") or 0),
                   cached_tokens=int(cached or 0))


def refused(e: ProxyError) -> Outcome:
    return Outcome(e.status, e.envelope(), True, e.code)
