"""The router: the pipeline's innermost handler. Picks a target, makes the attempt, falls back.

Fallback happens only before the first byte reaches the client: a stream is handed out only once its
first upstream chunk has arrived, and after that a failure ends the stream instead.
"""

from __future__ import annotations

import asyncio

from proxy.config import Config, ModelConfig, Target
from proxy.context import ChatCall, Reply
from proxy.errors import Forbidden, ModelNotFound, UpstreamError, UpstreamTimeout
from proxy.routing.backends import Backend
from proxy.streaming.relay import relay
from proxy.upstream import read_with_timeout


class Router:
    def __init__(self, config: Config, backends: dict[str, Backend]) -> None:
        self.models: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self.backends = backends

    def resolve(self, name: str) -> ModelConfig:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.",
                                param="model")
        return model

    async def __call__(self, call: ChatCall) -> Reply:
        targets = self.resolve(call.model).targets
        if call.key is not None and not call.key.may_use(call.model):
            raise Forbidden(f"This key may not use model '{call.model}'.", param="model")
        last: UpstreamError | None = None
        for target in targets:
            try:
                return await self.attempt(call, target)
            except UpstreamError as e:
                if not e.retryable:
                    raise
                last = e
        assert last is not None
        raise last

    async def attempt(self, call: ChatCall, target: Target) -> Reply:
        backend = self.backends[target.provider]
        call.attempts += 1
        call.target = target
        prepare = getattr(backend.provider, "prepare", None)
        if prepare is not None:
            await prepare(target, backend.transport)     # e.g. fetch a model's supported params (cached)
        wire = backend.provider.to_wire(call, target)
        headers = {"x-llm-provider": backend.name, "x-llm-upstream-model": target.model}
        if wire.dropped:
            headers["x-llm-dropped-params"] = ",".join(wire.dropped)
        call.response_headers.update(headers)
        t = backend.config.timeouts
        loop = asyncio.get_running_loop()
        deadline = call.started + t.total
        first_byte = max(0.0, min(t.first_byte, deadline - loop.time()))
        try:
            async with asyncio.timeout(first_byte):
                resp = await backend.transport.send(wire)
        except TimeoutError:
            raise UpstreamTimeout(f"provider '{backend.name}' sent no response within {t.first_byte:g}s") from None
        if resp.status >= 400:
            body = await read_with_timeout(resp, t.idle, backend.name)
            raise backend.provider.error_from_wire(resp.status, body, resp.headers)
        if not call.stream:
            body = await read_with_timeout(resp, max(0.0, min(t.idle, deadline - loop.time())), backend.name)
            out, call.usage = backend.provider.from_wire(resp.status, body, call, target)
            return Reply(body=out, headers=headers)
        translator = backend.provider.new_stream(call, target)
        chunks = resp.iter_chunks().__aiter__()
        try:
            async with asyncio.timeout(max(0.0, min(t.first_byte, deadline - loop.time()))):
                first = await anext(chunks)
        except TimeoutError:
            resp.release()
            raise UpstreamTimeout(f"provider '{backend.name}' sent no first chunk within {t.first_byte:g}s") from None
        except StopAsyncIteration:
            resp.release()
            raise UpstreamError(f"provider '{backend.name}' closed the stream before sending anything") from None
        except BaseException:
            resp.release()
            raise
        return Reply(chunks=relay(call, resp, chunks, first, translator, t.idle, deadline),
                     headers=headers, content_type="text/event-stream")
