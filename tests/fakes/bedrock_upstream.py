"""A fake Bedrock Runtime: Converse (JSON), ConverseStream (binary AWS event stream), InvokeModel (Titan
embeddings). It verifies each request's SigV4 signature by recomputing it with botocore, as AWS would,
and answers errors the way Bedrock does (`{"message"}` body, type in `x-amzn-ErrorType`).

Also holds the event-stream *encoder* the tests and fixtures use (the proxy only ever decodes).
"""

from __future__ import annotations

import asyncio
import re
import struct
import zlib
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY = "AKIDFAKEBEDROCK0001"
SECRET_KEY = "fake/Secret+Key/for/the/bedrock/fake0001"
REGION = "us-east-1"
PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"   # Bedrock's "p" padding field


# -- event-stream encoder ---------------------------------------------------------------------------

def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One vnd.amazon.eventstream message with string (type 7) headers."""
    hbytes = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hbytes += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(hbytes) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hbytes))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + hbytes + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(event_type: str, payload: dict[str, Any], pad: int = 8) -> bytes:
    if pad:
        payload = {**payload, "p": PAD[:pad]}
    return encode_message({":event-type": event_type, ":content-type": "application/json",
                           ":message-type": "event"}, orjson.dumps(payload))


def exception(exception_type: str, message: str) -> bytes:
    return encode_message({":exception-type": exception_type, ":content-type": "application/json",
                           ":message-type": "exception"}, orjson.dumps({"message": message}))


def stream_events(blocks: list[dict[str, Any]], stop_reason: str, usage: dict[str, int],
                  fail_after_first_delta: str | None = None) -> list[bytes]:
    """The ConverseStream events Bedrock sends for an answer made of `blocks` (text / toolUse)."""
    out = [event("messageStart", {"role": "assistant"})]
    for i, block in enumerate(blocks):
        if "text" in block:
            words = block["text"].split(" ")
            for k, w in enumerate(words):
                out.append(event("contentBlockDelta", {"contentBlockIndex": i,
                                                       "delta": {"text": ("" if k == 0 else " ") + w}}))
                if fail_after_first_delta:
                    out.append(exception(fail_after_first_delta, "Too many tokens, please wait before trying again."))
                    return out
        else:
            tu = block["toolUse"]
            out.append(event("contentBlockStart", {"contentBlockIndex": i, "start": {
                "toolUse": {"toolUseId": tu["toolUseId"], "name": tu["name"]}}}))
            args = orjson.dumps(tu["input"]).decode()
            half = len(args) // 2
            for piece in (args[:half], args[half:]):
                out.append(event("contentBlockDelta", {"contentBlockIndex": i,
                                                       "delta": {"toolUse": {"input": piece}}}))
        out.append(event("contentBlockStop", {"contentBlockIndex": i}))
    out.append(event("messageStop", {"stopReason": stop_reason}))
    out.append(event("metadata", {"usage": usage, "metrics": {"latencyMs": 321}}))
    return out


# -- SigV4 verification -----------------------------------------------------------------------------

_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")


def verify_sigv4(method: str, host: str, raw_path: str, headers: Any, body: bytes,
                 secret: str = SECRET_KEY, access_key: str = ACCESS_KEY, region: str = REGION,
                 service: str = "bedrock") -> str | None:
    """Recompute the signature over what was received; None if it matches, else why not."""
    headers = {k.lower(): v for k, v in headers.items()}
    m = _AUTH.match(headers.get("authorization", ""))
    if m is None:
        return "Authorization header is not AWS4-HMAC-SHA256"
    key, date, reg, svc, signed, signature = m.groups()
    if (key, reg, svc) != (access_key, region, service):
        return f"credential scope {key}/{reg}/{svc} is wrong"
    amz_date = headers.get("x-amz-date", "")
    if not amz_date.startswith(date):
        return "X-Amz-Date does not match the credential scope date"
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return "host and x-amz-date must be signed"
    req = AWSRequest(method=method, url=f"http://{host}{raw_path}", data=body,
                     headers={n: headers[n] for n in names if n != "host" and n in headers})
    req.headers["host"] = host
    req.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(access_key, secret, headers.get("x-amz-security-token")), service, region)
    want = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
    return None if want == signature else "The request signature we calculated does not match the signature you provided."


# -- the fake server --------------------------------------------------------------------------------

class FakeBedrock:
    """Set `blocks`/`stop_reason`/`usage` for the answer, `error = (status, type, message)` for a failure,
    `fail_midstream = "throttlingException"` to break a stream after its first text delta."""

    def __init__(self) -> None:
        self.blocks: list[dict[str, Any]] = [{"text": "Hello from Bedrock"}]
        self.stop_reason = "end_turn"
        self.usage = {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15}
        self.error: tuple[int, str, str] | None = None
        self.fail_midstream: str | None = None
        self.chunk_size = 5                  # stream bytes are written in pieces this small
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_post("/model/{tail:.*}", self.handle)
        self.server: Any = None

    def _error(self, status: int, etype: str, message: str) -> web.Response:
        return web.json_response({"message": message}, status=status, headers={
            "x-amzn-ErrorType": f"{etype}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "x-amzn-RequestId": "00000000-0000-0000-0000-000000000000"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.paths.append(request.raw_path)
        self.headers.append(dict(request.headers))
        why = verify_sigv4(request.method, request.host, request.raw_path, request.headers, raw)
        if why is not None:
            return self._error(403, "InvalidSignatureException", why)
        body = orjson.loads(raw)
        self.requests.append(body)
        m = re.fullmatch(r"/model/([^/]+)/(converse|converse-stream|invoke)", request.raw_path)
        if m is None:
            return self._error(404, "UnknownOperationException", "unknown operation")
        if self.error is not None:
            return self._error(*self.error)
        op = m.group(2)
        if op == "invoke":
            text = body["inputText"]
            return web.json_response({"embedding": [0.25, -0.5, 1.0], "inputTextTokenCount": len(text.split())})
        if op == "converse":
            return web.json_response({
                "output": {"message": {"role": "assistant", "content": self.blocks}},
                "stopReason": self.stop_reason, "usage": self.usage, "metrics": {"latencyMs": 321}})
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream",
                                           "x-amzn-RequestId": "00000000-0000-0000-0000-000000000001"})
        await resp.prepare(request)
        data = b"".join(stream_events(self.blocks, self.stop_reason, self.usage, self.fail_midstream))
        for i in range(0, len(data), self.chunk_size):
            await resp.write(data[i:i + self.chunk_size])
            if i % (self.chunk_size * 40) == 0:
                await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    def url_path(self, model: str, op: str) -> str:
        return f"/model/{quote(model, safe='')}/{op}"
