"""The Responses ingress's render, shared by HTTP (SSE) and WebSocket mode: the pipeline's reply (OpenAI chat,
or a pass-through target's own Responses answer) -> the Responses protocol, storing what `store` asks for."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from proxy.context import ChatCall, Reply
from proxy.errors import ProxyError
from proxy.ingress.responses_reply import (
    Draft,
    ResponsesStream,
    assistant_message,
    render_stream,
    response_body,
)
from proxy.ingress.responses_store import ResponsesStore, Stored

_ID = re.compile(rb'"id"\s*:\s*"(resp_[^"]+)"')


class ResponsesCodec:
    """One per call: `req` is the client's body as sent (echoed in the Response object)."""

    def __init__(self, req: dict[str, Any], store: ResponsesStore | None, tenant: Callable[[], str],
                 failed: Callable[[ProxyError], None]) -> None:
        self.req, self.store, self.tenant, self.failed = req, store, tenant, failed
        self.keep = store is not None and req.get("store", True) is not False

    def render(self, call: ChatCall, reply: Reply) -> Reply:
        if reply.status != 200:
            return reply
        if reply.chunks is not None:
            if reply.native:
                reply.chunks = self._pin_stream(call, reply.chunks)
                return reply
            stream = ResponsesStream(Draft(self.req, call.model))
            reply.chunks = render_stream(reply.chunks, stream, self.failed,
                                         lambda: self._save(call, stream.final))
            return reply
        if reply.body is None:
            return reply
        if reply.native:
            m = _ID.search(reply.body)
            if m is not None:
                self._pin(call, m.group(1).decode())
            return reply
        resp = response_body(reply.body, Draft(self.req, call.model))
        self._save(call, resp)
        reply.body = orjson.dumps(resp)
        return reply

    def _save(self, call: ChatCall, resp: dict[str, Any] | None) -> None:
        if not self.keep or resp is None or self.store is None:
            return
        msgs = call.body.get("messages") or []
        if isinstance(self.req.get("instructions"), str) and self.req["instructions"]:
            msgs = msgs[1:]                       # instructions are not carried over to a continuation
        self.store.save(self.tenant(), resp["id"], Stored(response=resp,
                                                          messages=[*msgs, assistant_message(resp["output"])]))

    def _pin(self, call: ChatCall, rid: str) -> None:
        """A response created upstream: remember which provider holds it, for its continuations."""
        if self.keep and self.store is not None and call.target is not None:
            self.store.save(self.tenant(), rid, Stored(provider=call.target.provider))

    async def _pin_stream(self, call: ChatCall, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        seen: bytes | None = b""
        try:
            async for data in chunks:
                if seen is not None:
                    seen = seen[-64:] + data
                    m = _ID.search(seen)
                    if m is not None:
                        self._pin(call, m.group(1).decode())
                        seen = None
                yield data
        except ProxyError as e:
            self.failed(e)
            yield e.sse()
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
