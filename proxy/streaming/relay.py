"""The upstream half of a stream: chunks -> translator -> client bytes, with idle and deadline guards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from proxy.context import ChatCall
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.providers.base import StreamTranslator
from proxy.upstream import UpstreamResponse


class _Watchdog:
    """Idle-gap and deadline guard for a stream. Per chunk the relay only stamps `last`; the timer
    re-arms itself lazily, so a healthy stream costs no timer churn."""

    __slots__ = ("_handle", "_loop", "_resp", "deadline", "expired", "idle", "last")

    def __init__(self, resp: UpstreamResponse, idle: float, deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._resp = resp
        self.idle, self.deadline = idle, deadline
        self.last = self._loop.time()
        self.expired = False
        self._handle = self._loop.call_at(min(self.last + idle, deadline), self._check)

    def _check(self) -> None:
        now = self._loop.time()
        due = min(self.last + self.idle, self.deadline)
        if now < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self.expired = True
        self._resp.release()          # makes the pending read fail; the relay reports a timeout

    def cancel(self) -> None:
        self._handle.cancel()


async def relay(call: ChatCall, resp: UpstreamResponse, chunks: AsyncIterator[bytes], first: bytes,
                translator: StreamTranslator, idle: float, deadline: float) -> AsyncIterator[bytes]:
    """Upstream chunks -> translator -> client bytes. Usage lands on the call however the stream ends."""
    dog = _Watchdog(resp, idle, deadline)
    loop = dog._loop
    tap = call.relayed         # accounting and traces read what went out, if they asked (a list)
    try:
        out = translator.feed(first)
        if out:
            if tap is not None:
                tap.append(out)
            yield out
        try:
            async for data in chunks:
                dog.last = loop.time()
                out = translator.feed(data)
                if out:
                    if tap is not None:
                        tap.append(out)
                    yield out
        except UpstreamError:
            if dog.expired:
                raise UpstreamTimeout("the upstream stream stalled (idle timeout or deadline)") from None
            raise
        if dog.expired:
            raise UpstreamTimeout("the upstream stream stalled (idle timeout or deadline)")
        tail = translator.finish()
        if tail:
            if tap is not None:
                tap.append(tail)
            yield tail
    finally:
        dog.cancel()
        resp.release()
        call.usage = translator.usage
