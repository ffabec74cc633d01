"""The pipeline runs without HTTP: stages wrap a ChatCall, as GraphQL, WebSocket and batch ingress will."""

from __future__ import annotations

import orjson
import pytest

from proxy.api.parse import chat_call
from proxy.app import build_gateway
from proxy.context import ChatCall, Reply
from proxy.errors import ProxyError, Unauthorized
from proxy.pipeline import Handler, compose
from tests.conftest import MASTER, make_config


async def test_pipeline_without_http_plain_and_stream():
    gw = build_gateway(make_config())
    try:
        call = chat_call({"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
                         {"Authorization": f"Bearer {MASTER}"}, ingress="test")
        reply = await gw.pipeline(call)
        assert orjson.loads(reply.body)["usage"]["completion_tokens"] == 3
        assert call.usage is not None and call.usage.completion_tokens == 3
        call = chat_call({"model": "mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                         {"x-api-key": MASTER})
        reply = await gw.pipeline(call)
        assert reply.chunks is not None
        data = b"".join([c async for c in reply.chunks])
        assert data.endswith(b"data: [DONE]\n\n")
        assert call.usage is not None and call.usage.completion_tokens == 16   # set after the last byte
    finally:
        for b in gw.backends.values():
            await b.transport.close()


async def test_rejected_call_never_reaches_later_stages():
    gw = build_gateway(make_config())
    call = chat_call({"model": "mock", "messages": [{"role": "user", "content": "x"}]}, {"api-key": "nope"})
    with pytest.raises(Unauthorized):
        await gw.pipeline(call)
    assert call.attempts == 0 and call.target is None


class Tag:
    """A stage that notes when it runs, when the reply comes back through it and when the call finishes."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    async def __call__(self, call: ChatCall, next: Handler) -> Reply:
        self.seen.append(self.name)
        call.on_finish(lambda c: self.seen.append("finish:" + self.name))
        reply = await next(call)
        self.seen.append("after:" + self.name)
        return reply


def recording_endpoint(seen: list[str]) -> Handler:
    async def endpoint(call: ChatCall) -> Reply:
        seen.append("router")
        return Reply(body=b"{}")
    return endpoint


async def test_compose_order_and_finalisers():
    seen: list[str] = []
    handler = compose([Tag("auth", seen), Tag("limit", seen), Tag("cache", seen)], recording_endpoint(seen))
    call = ChatCall(body={}, model="m", stream=False)
    await handler(call)
    await call.finish()
    assert seen == ["auth", "limit", "cache", "router", "after:cache", "after:limit", "after:auth",
                    "finish:cache", "finish:limit", "finish:auth"]


async def test_checks_run_in_order_between_stages_and_a_refusal_stops_the_rest():
    seen: list[str] = []

    class Gate:
        def __init__(self, name: str, refuse: bool = False, sync: bool = False) -> None:
            self.name, self.refuse, self.sync = name, refuse, sync

        def check(self, call: ChatCall):
            if self.sync:
                self._go(call)
                return None
            return self._async(call)

        async def _async(self, call: ChatCall) -> None:
            self._go(call)

        def _go(self, call: ChatCall) -> None:
            seen.append(self.name)
            if self.refuse and call.model == "refused":
                raise ProxyError("no", status=429)

    handler = compose([Gate("auth"), Gate("validate", sync=True), Tag("cost", seen), Gate("budget", refuse=True),
                       Tag("cache", seen)], recording_endpoint(seen))
    await handler(ChatCall(body={}, model="m", stream=False))
    assert seen == ["auth", "validate", "cost", "budget", "cache", "router", "after:cache", "after:cost"]
    seen.clear()
    with pytest.raises(ProxyError):
        await handler(ChatCall(body={}, model="refused", stream=False))
    assert seen == ["auth", "validate", "cost", "budget"]        # nothing after the refusal ran
